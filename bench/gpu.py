"""GPU rows: ecograph's CUDA builds against torch eager and torch.compile, with NVML energy.

The GPU machine has no TVM compiler and no network, so the work is split in two:

    python bench/gpu.py prepare --out .gpu        # here: capture, optimize, compile for CUDA
    bash bench/device_gpu.sh                      # there (device tool): `run`, results in $OUT

`prepare` builds each workload of bench/runners.py with ecograph's default pipeline for
`cuda:sm_90` (the H200; --arch for another GPU), with nvcc's fatbin embedded in the library when
nvcc is on this machine (else the GPU host compiles the CUDA source at load), and writes, per
workload, the artifact, its inputs and the reference interpreter's outputs. It also lays out a
runtime-only TVM (no libtvm_compiler.so) and the cp312 tvm_ffi in .gpu/site for the GPU host.

Weights too large to travel (the carry limit is 64 MiB in all; MiniLM alone is 88 MB of fp32)
are replaced by seeded random tensors with each original tensor's mean and standard deviation:
float parameters of at least REGEN_BYTES leave the folder and `run` regenerates them. The
expected outputs are the reference interpreter's on the graph with those very regenerated
weights, so the GPU build is still checked end to end. Speed does not depend on the values.

`run` (on the GPU host) loads each artifact with `ecograph.load` (runtime-only TVM), checks its
outputs against the expected ones, then times, interleaved over --rounds rounds: ecograph with
torch CUDA tensors in and out (no host copies), ecograph through numpy (host in, host out, what
a numpy caller gets), torch eager fp32 and torch.compile(mode="reduce-overhead") fp32 on the same
architecture (random weights: the real MiniLM weights do not travel). Each runner's energy per
call is the NVML board energy counter's difference over a loop of at least --energy-seconds,
divided by the calls (the whole board, idle power included). Results go to OUT/gpu.json and
OUT/gpu.md after every measurement, so a run cut short still reports what it measured.

Workloads named "lm..." are compiled LMs (bench/gpu_lm.py has what they build and measure);
prepare builds them by default, run takes them with `--workloads lm` (LM_WORKLOADS).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GPU_WORKLOADS = ["minilm-b1", "llama-decode", "resnet", "minilm-b8", "llama-prefill"]
# compiled LMs (bench/gpu_lm.py): a check of compile_lm's CUDA build, 7B-shaped decode slices
LM_WORKLOADS = ["lm-check", "lm7b-int4-l1", "lm7b-int4-l2", "lm7b-torch-l32"]
REGEN_BYTES = 256 << 10  # float params at least this big are regenerated on the GPU host
TVM_FFI_WHEEL = "apache-tvm-ffi==0.1.14.post0"  # the version the installed TVM 0.27 uses


# ---------------------------------------------------------------------------- prepare


def name_rng(name: str) -> np.random.Generator:
    """A generator seeded by `name`: the same stand-in for a weight on both machines."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def regenerate(name: str, shape: list[int], dtype: str, mean: float, std: float) -> np.ndarray:
    """The stand-in for a weight that does not travel: normal(mean, std), seeded by its name."""
    rng = name_rng(name)
    return (rng.standard_normal(shape, dtype=np.float32) * std + mean).astype(dtype)


def prepare(
    workloads: list[str], out: Path, arch: str, target: str | None = None, trace: bool = False
) -> None:
    """Build each workload for `target` (default: cuda:`arch`) into out/art/<workload>.

    With `trace`, every float value of the graph is an output too and the artifact goes to
    out/art/<workload>-trace: `run` then names the first ops whose results drift."""
    import ecograph
    from ecograph.api import feeds_for
    from ecograph.passes import PassManager

    art = out / "art"
    art.mkdir(parents=True, exist_ok=True)
    target = target or f"cuda:{arch}"
    embedded = shutil.which("nvcc") is not None
    if embedded:
        # TVM's own build-time callback (tvm.support.nvcc) then runs nvcc: the library
        # carries fatbins for `arch` and the GPU host compiles nothing at load.
        os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    for name in workloads:
        if name.startswith("lm"):
            from bench.gpu_lm import prepare_lm

            t0 = time.perf_counter()
            prepare_lm(name, art / name, target)
            size = sum(f.stat().st_size for f in (art / name).rglob("*") if f.is_file())
            print(f"{name}: {size / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f} s", flush=True)
            continue
        t0 = time.perf_counter()
        model, args = _build(name)
        graph = ecograph.from_torch(model, args)
        PassManager(["default"]).run(graph)
        for c in graph.constants.values():  # folded transposes can leave strided views
            if c.const_value is not None and not c.const_value.flags.c_contiguous:
                graph.set_constant_value(c, np.ascontiguousarray(c.const_value))
        traced: dict[str, str] = {}
        if trace:
            traced = _trace_outputs(graph)
        folder = art / (f"{name}-trace" if trace else name)
        if folder.exists():
            shutil.rmtree(folder)
        # Weights as parameters (a file beside the library), so the big ones can stay here.
        artifact = Path(ecograph.compile(graph, target, folder / "artifact", keep_params=True))
        feeds = feeds_for(graph, args)
        np.savez(folder / "inputs.npz", **feeds)
        regen = _strip_params(artifact, graph, folder, target)
        expected = ecograph.ir.interpret(graph, feeds)
        if trace:  # a strided sample of each value keeps the folder small
            expected = {k: _sample(v) for k, v in expected.items()}
        np.savez(folder / "expected.npz", **expected)
        meta = {
            "workload": name,
            "arch": arch,
            "kernels_embedded": embedded,
            "regenerated": regen,
            "config": _config_of(model),
            "traced": traced,
            "compile_seconds": round(time.perf_counter() - t0, 1),
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{name}: {size / 2**20:.1f} MiB, {meta['compile_seconds']} s", flush=True)


TRACE_SAMPLE = 4096


def _sample(a: np.ndarray) -> np.ndarray:
    """At most TRACE_SAMPLE elements of `a`, evenly strided (the same on both sides)."""
    flat = np.asarray(a).reshape(-1)
    step = max(1, -(-flat.size // TRACE_SAMPLE))
    return flat[::step]


def _trace_outputs(graph: Any) -> dict[str, str]:
    """Make every float value a node computes an output; returns {value name: its op}."""
    traced: dict[str, str] = {}
    outs = list(graph.outputs)
    for node in graph.nodes:
        for v in node.outputs:
            if v in outs or "float" not in str(v.dtype):
                continue
            outs.append(v)
            traced[v.name] = node.op_type
    graph.set_outputs(outs)
    return traced


def _build(name: str) -> tuple[Any, tuple[Any, ...]]:
    from bench.runners import build_workload

    return build_workload(name)


def _config_of(model: Any) -> dict[str, Any] | None:
    """The Hugging Face config inside a workload's wrapper, for building its twin there."""
    inner = getattr(model, "inner", None)
    cfg = getattr(inner, "config", None)
    return cfg.to_dict() if cfg is not None else None


def _strip_params(artifact: Path, graph: Any, folder: Path, target: str) -> dict[str, Any]:
    """Move the big float params out of the artifact; set their regenerated values in `graph`
    (the expected outputs are computed with them; transposed where the param is the
    constant transposed, as GPU builds store product weights [N, K]). Returns {name: recipe}."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    info = manifest.get("params") or {}
    if not info.get("file"):
        return {}
    from ecograph.backends.tvm.driver import backend_passes
    from ecograph.backends.tvm.targets import resolve
    from ecograph.passes import run_passes

    run_passes(graph, backend_passes(resolve(target)))  # the graph the params were taken from
    consts = graph.constants
    with np.load(artifact / info["file"]) as data:
        arrays = {n: data[n] for n in info["names"]}
    regen: dict[str, Any] = {}
    small: dict[str, np.ndarray] = {}
    for n, a in arrays.items():
        if a.dtype.kind == "f" and a.nbytes >= REGEN_BYTES:
            c = consts.get(n)
            value = None if c is None else np.asarray(c.const_value)
            if value is not None and np.array_equal(value, a):
                transposed = False
            elif value is not None and value.ndim == 2 and np.array_equal(value.T, a):
                transposed = True
            else:
                raise SystemExit(f"param {n} {a.shape} is not a graph constant (or its transpose)")
            std = float(a.std())
            recipe = {"shape": list(a.shape), "dtype": str(a.dtype), "mean": float(a.mean())}
            recipe["std"] = std
            regen[n] = recipe
            remade = regenerate(n, **recipe)
            graph.set_constant_value(c, np.ascontiguousarray(remade.T) if transposed else remade)
        else:
            small[n] = a
    np.savez(folder / "params_small.npz", **small)
    (artifact / info["file"]).unlink()
    return regen


def build_site(out: Path) -> None:
    """A runtime-only TVM and the cp312 tvm_ffi under out/site, for the GPU host's Python 3.12."""
    import tvm

    site = out / "site"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    src = Path(tvm.__file__).parent
    shutil.copytree(
        src,
        site / "tvm",
        ignore=lambda d, names: [
            n
            for n in names
            if n in ("3rdparty", "src", "__pycache__", "libtvm_compiler.so")
            and (Path(d) == src or Path(d) == src / "lib" or n == "__pycache__")
        ],
    )
    wheels = out / "wheels"
    wheels.mkdir(exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "cp", "--platform",
         "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "-d", str(wheels),
         TVM_FFI_WHEEL],
        check=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("apache_tvm_ffi-*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    shutil.rmtree(wheels)
    for junk in site.glob("*.dist-info"):
        shutil.rmtree(junk)


# -------------------------------------------------------------------------------- run


class Results:
    """Every measurement so far, rewritten to OUT/gpu.json and OUT/gpu.md after each one."""

    def __init__(self, out: Path, machine: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {"machine": machine, "workloads": {}, "errors": []}

    def set(self, workload: str, key: str, value: Any) -> None:
        self.data["workloads"].setdefault(workload, {})[key] = value
        self.flush()

    def error(self, what: str, exc: BaseException) -> None:
        msg = f"{what}: {type(exc).__name__}: {str(exc)[:1500]}"
        print(msg, flush=True)
        self.data["errors"].append(msg)
        self.flush()

    def flush(self) -> None:
        (self.out / "gpu.json").write_text(json.dumps(self.data, indent=1, default=str))
        (self.out / "gpu.md").write_text(markdown(self.data))


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"Machine: {m.get('gpu')} (driver {m.get('driver')}), torch {m.get('torch')}, "
        f"Python {m.get('python')}, {m.get('date')}",
        "",
        "| workload | runner | p50 ms | p90 ms | vs torch eager | vs torch.compile | "
        "J/call (NVML) | check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for wl, res in data["workloads"].items():
        timings = res.get("timings", {})
        eager = timings.get("torch-eager", {}).get("p50_ms")
        comp = timings.get("torch-compile", {}).get("p50_ms")
        for runner, t in timings.items():
            p50 = t.get("p50_ms")
            r_e = f"{p50 / eager:.3g}x" if p50 and eager else "-"
            r_c = f"{p50 / comp:.3g}x" if p50 and comp else "-"
            energy = t.get("joules_per_call")
            joules = f"{energy:.3g}" if energy is not None else "n/a"
            check = res.get("check", {}) if runner.startswith("ecograph") else {}
            chk = f"cos {check['cosine']:.6f}" if "cosine" in check else ""
            lines.append(
                f"| {wl} | {runner} | {_f(p50)} | {_f(t.get('p90_ms'))} | {r_e} | {r_c} | "
                f"{joules} | {chk} |"
            )
    details = [
        f"- {wl} {key}: {json.dumps(value, default=str)}"
        for wl, res in data["workloads"].items()
        for key, value in res.items()
        if key not in ("timings", "trace")
    ]
    if details:
        lines += ["", "Details:", *details]
    if data["errors"]:
        lines += ["", "Errors:", *[f"- {e}" for e in data["errors"]]]
    return "\n".join(lines) + "\n"


def _f(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else "-"


def machine_info(torch: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
             "--format=csv,noheader"],
            capture_output=True, text=True, check=False, timeout=20,
        )  # fmt: skip
        info["driver"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["driver"] = f"unavailable ({exc})"
    return info


class Energy:
    """NVML's total board energy (mJ since driver load), or None where there is none."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.why = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            self.handle, self.nvml = handle, pynvml
        except Exception as exc:
            self.why = f"NVML energy counter unavailable ({type(exc).__name__}: {exc})"

    def millijoules(self) -> int:
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))


def torch_twin(name: str, config: dict[str, Any] | None, device: str) -> tuple[Any, tuple]:
    """The workload's architecture in torch on `device`, with its own random weights."""
    import torch

    if name == "resnet":
        from tests.models.cnn import TinyResNet

        torch.manual_seed(0)
        return TinyResNet().eval().to(device), (torch.randn(1, 3, 64, 64, device=device),)
    import transformers

    assert config is not None
    if name.startswith("minilm"):
        cfg = transformers.BertConfig.from_dict(config)
        cfg._attn_implementation = "sdpa"
        from tests.quant.minilm_eval import encoder_module

        encoder = encoder_module(transformers.BertModel(cfg).eval())
        batch = 8 if name.endswith("b8") else 1
        ids = torch.randint(1000, 20000, (batch, 128), device=device)
        mask = torch.ones(batch, 128, dtype=torch.int64, device=device)
        mask[:, 100:] = 0
        return encoder.to(device), (ids, mask)
    from bench.runners import decode_workload, prefill_module

    cfg = transformers.LlamaConfig.from_dict(config)
    cfg._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(cfg).eval()
    if name == "llama-prefill":
        return prefill_module(model).to(device), (torch.randint(0, 1000, (1, 128), device=device),)
    module, args = decode_workload(model)
    return module.to(device), tuple(a.to(device) for a in args)


def _out_of_time(signum: int, frame: Any) -> None:
    raise TimeoutError("torch.compile took longer than its share of the time budget")


def time_calls(call: Any, sync: Any, seconds: float, min_calls: int = 5) -> list[float]:
    """Per-call seconds of calls run back to back for about `seconds` (synchronized each)."""
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(out) < min_calls:
        t0 = time.perf_counter()
        call()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def energy_per_call(call: Any, sync: Any, meter: Energy, seconds: float) -> dict[str, Any]:
    if meter.handle is None:
        return {"energy_note": meter.why}
    sync()
    e0, t0, n = meter.millijoules(), time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        call()
        n += 1
    sync()
    e1, t1 = meter.millijoules(), time.perf_counter()
    return {
        "joules_per_call": (e1 - e0) / 1000.0 / n,
        "energy_calls": n,
        "energy_seconds": round(t1 - t0, 3),
        "mean_watts": (e1 - e0) / 1000.0 / (t1 - t0),
    }


def _trace_report(
    model: Any, expected: dict[str, np.ndarray], got: list[Any], ops: dict[str, str]
) -> list[dict[str, Any]]:
    """Per traced value, in graph order: its op and the relative L2 error of its sample."""
    rows = []
    for name, out in zip(model.output_names, got, strict=True):
        want = expected[name].astype(np.float64)
        have = _sample(np.asarray(out)).astype(np.float64)
        scale = float(np.linalg.norm(want)) or 1.0
        rows.append(
            {
                "value": name,
                "op": ops.get(name, "output"),
                "rel_err": float(np.linalg.norm(have - want)) / scale,
                "shape": list(np.asarray(out).shape),
            }
        )
    return rows


def restore_params(folder: Path, work: Path) -> Path:
    """A copy of the workload's artifact with its regenerated params written back in (and the
    manifest's hash of the params file updated to match)."""
    from ecograph.backends.tvm.artifact import file_sha256

    meta = json.loads((folder / "meta.json").read_text())
    dst = work / folder.name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(folder / "artifact", dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    info = manifest.get("params") or {}
    if info.get("file"):
        small = dict(np.load(folder / "params_small.npz"))
        regen = meta["regenerated"]
        arrays = {n: small[n] if n in small else regenerate(n, **regen[n]) for n in info["names"]}
        path = dst / info["file"]
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        manifest["files"][info["file"]] = file_sha256(path)
        (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dst


def run(args: argparse.Namespace) -> int:
    import torch

    import ecograph

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out, machine_info(torch))
    deadline = time.perf_counter() + args.budget
    device = "cuda" if torch.cuda.is_available() else "cpu"
    meter = Energy()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for name in args.workloads.split(","):
        folder = Path(args.art) / "art" / name
        if not folder.is_dir():
            results.error(name, FileNotFoundError(f"{folder} missing: run prepare first"))
            continue
        if time.perf_counter() > deadline:
            results.error(name, TimeoutError("time budget spent before this workload"))
            break
        if name.startswith("lm"):
            from bench.gpu_lm import run_lm

            run_lm(name, folder, work, results, meter, sync, args, deadline)
            continue
        meta = json.loads((folder / "meta.json").read_text())
        runners: dict[str, Any] = {}
        try:
            t0 = time.perf_counter()
            model = ecograph.load(restore_params(folder, work))
            results.set(name, "load_seconds", round(time.perf_counter() - t0, 2))
            feeds = dict(np.load(folder / "inputs.npz"))
            expected = dict(np.load(folder / "expected.npz"))
            got = model(**feeds)
            got = list(got) if isinstance(got, tuple) else [got]
            from ecograph.api import compare_outputs

            if meta.get("traced"):
                results.set(name, "trace", _trace_report(model, expected, got, meta["traced"]))
                continue
            results.set(name, "check", compare_outputs(expected, got))
            on_dev = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
            runners["ecograph-cuda"] = lambda m=model, f=on_dev: m(**f)
            runners["ecograph-numpy"] = lambda m=model, f=feeds: m(**f)
        except Exception as exc:
            results.error(f"{name} ecograph", exc)
        try:
            if name != meta["workload"]:  # a diagnostic variant: its ecograph rows only
                raise LookupError(f"{name} is a variant of {meta['workload']}: no torch rows")
            twin, targs = torch_twin(name, meta["config"], device)
            runners.update(torch_runners(name, twin, targs, deadline, results, sync))
        except Exception as exc:
            results.error(f"{name} torch", exc)
        measure_runners(name, runners, results, meter, sync, args)
    from bench.gpu_lm import extrapolate

    extrapolate(results)
    return 0


def torch_runners(
    name: str, twin: Any, targs: tuple, deadline: float, results: Results, sync: Any
) -> dict[str, Any]:
    """torch-eager and, when at least 90 s of the budget are left, torch-compile
    (mode="reduce-overhead", warmed up; a compile that hangs costs its row only) runners of
    `twin(*targs)` under inference_mode."""
    import torch

    with torch.inference_mode():
        twin(*targs)

    def eager(t: Any = twin, a: tuple = targs) -> Any:
        with torch.inference_mode():
            return t(*a)

    runners = {"torch-eager": eager}
    left = deadline - time.perf_counter()
    if left <= 90:
        results.error(f"{name} torch-compile", TimeoutError("skipped: time budget"))
        return runners
    t0 = time.perf_counter()
    compiled = torch.compile(twin, mode="reduce-overhead")
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(int(min(150, left - 60)))
    try:
        with torch.inference_mode():
            for _ in range(3):
                compiled(*targs)
        sync()
    except Exception as exc:  # eager's row stays
        results.error(f"{name} torch-compile", exc)
        return runners
    finally:
        signal.alarm(0)
    results.set(name, "torch_compile_seconds", round(time.perf_counter() - t0, 1))

    def comp(c: Any = compiled, a: tuple = targs) -> Any:
        with torch.inference_mode():
            return c(*a)

    runners["torch-compile"] = comp
    return runners


def measure_runners(
    name: str,
    runners: dict[str, Any],
    results: Results,
    meter: Energy,
    sync: Any,
    args: argparse.Namespace,
) -> None:
    samples: dict[str, list[float]] = {r: [] for r in runners}
    for r in list(runners):  # warm-up; a runner that fails here is dropped with its error
        try:
            runners[r]()
            sync()
        except Exception as exc:
            results.error(f"{name} {r} warm-up", exc)
            del runners[r], samples[r]
    order = list(runners)
    for k in range(args.rounds):
        for r in order[k % len(order) :] + order[: k % len(order)] if order else []:
            samples[r] += time_calls(runners[r], sync, args.slice)
    timings: dict[str, Any] = {}
    for r, s in samples.items():
        ms = sorted(x * 1000 for x in s)
        timings[r] = {
            "p50_ms": statistics.median(ms),
            "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
            "calls": len(ms),
        }
    results.set(name, "timings", timings)
    for r in order:
        timings[r].update(energy_per_call(runners[r], sync, meter, args.energy_seconds))
        results.set(name, "timings", timings)


# ------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="here: build the CUDA artifacts and the runtime-only TVM")
    pp.add_argument("--out", default=".gpu")
    pp.add_argument(
        "--workloads", default=",".join(GPU_WORKLOADS + LM_WORKLOADS), help="'lm': all LM rows"
    )
    pp.add_argument("--arch", default="sm_90")
    pp.add_argument("--target", default=None, help="another target (x86: a dry run here)")
    pp.add_argument("--no-site", action="store_true", help="skip the runtime-only TVM folder")
    pp.add_argument("--trace", action="store_true", help="every float value an output too")
    pr = sub.add_parser("run", help="on the GPU host: check and time the artifacts")
    pr.add_argument("--art", default=".gpu")
    pr.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    pr.add_argument("--work", default="/tmp/ecograph-gpu")
    pr.add_argument(
        "--workloads", default=",".join(GPU_WORKLOADS), help="'lm': the LM rows (gpu_lm.py)"
    )
    pr.add_argument("--rounds", type=int, default=5)
    pr.add_argument("--slice", type=float, default=0.2, help="seconds per runner per round")
    pr.add_argument("--energy-seconds", type=float, default=2.0)
    pr.add_argument("--budget", type=float, default=360.0, help="seconds for the whole run")
    args = p.parse_args(argv)
    names = [w for n in args.workloads.split(",") for w in (LM_WORKLOADS if n == "lm" else [n])]
    args.workloads = ",".join(names)
    if args.cmd == "prepare":
        out = Path(args.out)
        prepare(names, out, args.arch, args.target, args.trace)
        if not args.no_site:
            build_site(out)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
