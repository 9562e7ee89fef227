"""MetaSchedule tuning with a progress bar and a database cached by workload and target.

Untuned CPU code from TVM's default pipeline is about 100x slower than ONNX Runtime (plain
loops: no vectorization, no threads); tuning is what makes the x86 and ARM builds fast.
`tune_module` legalizes and fuses the Relax module, tunes every kernel for a trial budget and
applies the best schedules. The database lives in `<cache>/<key>/` where `key` hashes the
legalized workload and the target, so compiling the same model for the same target again
reuses it and does no tuning.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ecograph.errors import BuildError

DONE = "ecograph-tuning.json"
RECORDS = "database_tuning_record.json"


def default_cache_dir() -> Path:
    env = os.environ.get("ECOGRAPH_TUNING_CACHE")
    if env:
        return Path(env)
    from ecograph.cache import default_cache_dir as ecograph_cache_dir

    return ecograph_cache_dir() / "tuning"


def workload_key(mod: Any, target: Any) -> str:
    """A stable key for (legalized module, target): structural hash + target JSON."""
    from tvm_ffi.structural import structural_hash

    h = hashlib.sha256()
    h.update(str(structural_hash(mod)).encode())
    h.update(json.dumps(_target_json(target), sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def _target_json(target: Any) -> Any:
    try:
        return target.export()
    except AttributeError:
        return str(target)


def _count_records(work_dir: Path) -> int:
    path = work_dir / RECORDS
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def tune_module(
    mod: Any,
    target: Any,
    *,
    trials: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Tune `mod` for `target` with MetaSchedule (or reuse a cached database).

    Returns the module with tuned schedules applied and a summary for the manifest:
    trials, seconds spent tuning now (0 on a cache hit), cache key and whether it was reused.
    """
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    if trials <= 0:
        raise BuildError(f"tuning needs a positive trial budget, got {trials}")
    with target:
        legal = relax.get_pipeline("zero")(mod)
    key = workload_key(legal, target)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    work_dir = root / f"{key}-t{trials}"
    reused = (work_dir / DONE).is_file()
    seconds = 0.0
    if not reused:
        seconds = _tune(legal, target, trials, work_dir, progress)
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    with target, database, tvm.transform.PassContext(opt_level=3):
        tuned = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(legal)
    info = json.loads((work_dir / DONE).read_text())
    return tuned, {
        "trials": trials,
        "seconds": round(seconds, 3),
        "first_tuning_seconds": info.get("seconds"),
        "records": info.get("records"),
        "cost_model": info.get("cost_model"),
        "cache_key": work_dir.name,
        "reused": reused,
    }


def _tune(mod: Any, target: Any, trials: int, work_dir: Path, progress: bool) -> float:
    """Run MetaSchedule into a temporary folder and move it into the cache when done."""
    from tvm.s_tir import meta_schedule as ms

    work_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{work_dir.name}.", dir=work_dir.parent))
    error: list[BaseException] = []

    # Generous timeouts: builder workers are fresh processes that import TVM, which takes
    # tens of seconds on a busy 2-core machine (the 30 s default then fails every trial).
    workers = max(1, min(4, os.cpu_count() or 1))
    builder = ms.builder.LocalBuilder(max_workers=workers, timeout_sec=300)
    runner = ms.runner.LocalRunner(timeout_sec=120)
    cost_model = cost_model_name()

    def run() -> None:
        try:
            ms.relax_integration.tune_relax(
                mod,
                {},
                target,
                str(tmp),
                max_trials_global=trials,
                num_trials_per_iter=min(64, max(4, trials // 4)),
                seed=0,
                builder=builder,
                runner=runner,
                cost_model=cost_model,
            )
        except BaseException as exc:
            error.append(exc)

    start = time.perf_counter()
    worker = threading.Thread(target=run, name="ecograph-metaschedule", daemon=True)
    worker.start()
    bar = _progress_bar(trials, progress)
    try:
        while worker.is_alive():
            worker.join(0.5)
            if bar is not None:
                done = min(trials, _count_records(tmp))
                if done > bar.n:
                    bar.update(done - bar.n)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    if error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(f"MetaSchedule tuning failed: {error[0]}") from error[0]
    summary = {
        "trials": trials,
        "seconds": round(seconds, 3),
        "records": _count_records(tmp),
        "cost_model": cost_model,
    }
    (tmp / DONE).write_text(json.dumps(summary, indent=2) + "\n")
    if work_dir.exists():  # another process finished the same workload first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.rename(tmp, work_dir)
    return seconds


def cost_model_name() -> str:
    """MetaSchedule's XGBoost cost model when xgboost is installed, else random search."""
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="MetaSchedule trials", unit="trial", mininterval=1.0)
