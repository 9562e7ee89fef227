"""The `ecograph` command line. Every command has --help.

MODEL arguments are an .onnx file, a Python reference `package.module:factory` whose factory
returns (torch module, example inputs) or an ecograph Graph, or `default` for the bundled
encoder block.

Exit codes: 0 success, 1 internal error (a bug in ecograph: please report it), 2 usage (the
command line cannot work as given), 3 the model, artifact or inputs were rejected, 4 the
accuracy budget was missed. Each `EcographError` carries its code (ecograph/errors.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import json
import math
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from ecograph.errors import AccuracyError, BuildError, EcographError, InputError, UsageError

MODEL_HELP = (
    "MODEL arguments are an .onnx file, a Python reference `package.module:factory` whose "
    "factory returns (torch module, example inputs) or an ecograph Graph, or `default` for the "
    "bundled encoder block."
)

EXIT_CODES = """\
exit codes:
  0  success
  1  internal error: a bug in ecograph (run with --debug for the traceback; please report it)
  2  usage: the command line cannot work as given (unknown option, bad value, missing file)
  3  rejected: the model, artifact or inputs cannot be used (malformed, unsupported, too large)
  4  accuracy: the optimized model missed the accuracy budget
"""

# ------------------------------------------------------------------ console


@dataclass
class Console:
    """Where a command's words go: `say` is the human-readable result (stdout; nothing with
    --json or --quiet), `progress` a line about work under way (stderr, only with --verbose),
    `note` something the user should know (stderr, not with --quiet)."""

    json: bool = False
    quiet: bool = False
    verbose: bool = False

    def say(self, text: str = "") -> None:
        if not self.json and not self.quiet:
            print(text)

    def progress(self, text: str) -> None:
        if self.verbose and not self.quiet:
            print(f"ecograph: {text}", file=sys.stderr)

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"ecograph: note: {text}", file=sys.stderr)

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Run a command: under --quiet everything it writes (progress bars, warnings) is
        dropped; under --json stray prints go to stderr, so stdout holds only the JSON."""
        if self.quiet:
            sink = io.StringIO()
            with (
                _native_stderr_dropped(),
                contextlib.redirect_stdout(sink),
                contextlib.redirect_stderr(sink),
            ):
                yield
        elif self.json:
            with contextlib.redirect_stdout(sys.stderr):
                yield
        else:
            yield


@contextlib.contextmanager
def _native_stderr_dropped() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for a while: native libraries (TVM's C++ logging)
    write there directly, past sys.stderr. Errors still reach Python as exceptions."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 at all: nothing to drop
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@dataclass
class Done:
    """A command's result: `data` is what --json prints; `exit_code` 0 unless it says."""

    data: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0


# ------------------------------------------------------------------- models


def load_model(spec: str, con: Console | None = None) -> tuple[Any, Any]:
    """(graph or torch module, example inputs or None) for a MODEL argument."""
    if con is not None:
        con.progress(f"loading {spec}")
    if spec == "default":
        from ecograph.models import build_default_model, example_inputs

        return build_default_model(), example_inputs()
    if Path(spec).is_file():
        from ecograph.frontend.onnx import from_onnx

        return from_onnx(spec), None
    if spec.endswith(".onnx"):
        raise UsageError(f"MODEL {spec} does not exist; give the path of an .onnx file")
    if ":" not in spec:
        raise UsageError(
            f"MODEL {spec!r} is neither an existing .onnx file nor 'package.module:factory' "
            "(nor 'default', the bundled encoder block)"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise UsageError(
                f"cannot import {module_name!r} for MODEL {spec!r}: no such module; check the "
                "name and that its folder is on PYTHONPATH"
            ) from exc
        raise EcographError(f"importing {module_name!r} for MODEL {spec!r} failed: {exc}") from exc
    except Exception as exc:  # the user's module failed while importing
        raise EcographError(
            f"importing {module_name!r} for MODEL {spec!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UsageError(f"{module_name} has no callable {attr!r} (MODEL {spec!r})")
    try:
        made = factory()
    except EcographError:
        raise
    except Exception as exc:  # the user's factory failed: not a bug in ecograph
        raise EcographError(
            f"MODEL factory {spec} raised {type(exc).__name__}: {exc}; it must return "
            "(torch module, example inputs) or an ecograph Graph"
        ) from exc
    if isinstance(made, tuple) and len(made) == 2:
        return made
    return made, None


def to_graph(model: Any, example_inputs: Any) -> Any:
    """An ecograph Graph from whatever load_model returned."""
    from ecograph.ir import Graph

    if isinstance(model, Graph):
        return model
    from ecograph.frontend.torch import from_torch

    if example_inputs is None:
        raise EcographError("a torch model needs example inputs: return (module, inputs)")
    return from_torch(model, example_inputs)


# ----------------------------------------------------------- argument types


def _binding(text: str) -> tuple[str, int]:
    """--bind NAME=INT."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected SYM=N (e.g. seq=128), got {text!r}")
    return name, int(value)


def _input_file(text: str) -> tuple[str, str]:
    """--input NAME=FILE.npy."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npy, got {text!r}")
    return name, path


_DEVICE = re.compile(r"cpu|cuda|cuda:\d+")


def _device(text: str) -> str:
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _int_at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _cosine_budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"a cosine similarity budget is in (0, 1] (e.g. 0.99), got {text!r}"
        )
    return value


# ----------------------------------------------------------------- commands


def cmd_inspect(args: argparse.Namespace, con: Console) -> Done:
    from ecograph.ir import registered_ops
    from ecograph.ir.stats import graph_stats

    model, inputs = load_model(args.model, con)
    graph = to_graph(model, inputs)
    stats = graph_stats(graph, dict(args.bind))
    known = {(s.domain, s.op_type) for s in registered_ops()}
    unknown = sorted({n.qualified_op for n in graph.nodes if (n.domain, n.op_type) not in known})
    con.say(f"model: {args.model} ({graph.name})")
    con.say("inputs: " + ", ".join(f"{v.name}: {v.type}" for v in graph.inputs))
    con.say("outputs: " + ", ".join(f"{v.name}: {v.type}" for v in graph.outputs))
    con.say(stats.summary())
    con.say("unsupported ops: " + (", ".join(unknown) if unknown else "none"))
    return Done(
        {
            "model": args.model,
            "graph": graph.name,
            "inputs": [{"name": v.name, "type": str(v.type)} for v in graph.inputs],
            "outputs": [{"name": v.name, "type": str(v.type)} for v in graph.outputs],
            "stats": dataclasses.asdict(stats),
            "unsupported_ops": unknown,
        }
    )


def cmd_report(args: argparse.Namespace, con: Console) -> Done:
    from ecograph.report.green import REPORT_JSON, read_report

    folder = Path(args.result_dir)
    path = folder / REPORT_JSON
    if not folder.is_dir():
        raise UsageError(f"RESULT_DIR {folder} is not a folder; pass a folder written by optimize")
    if not path.is_file():
        raise UsageError(
            f"{path} does not exist; pass a folder written by 'ecograph optimize --report DIR' "
            "or optimize().save()"
        )
    try:
        report = read_report(folder)
        table = report.table()  # malformed values show when they are formatted
        report.to_html()
    except EcographError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # json or field errors
        first = (str(exc).splitlines() or [""])[0]
        raise EcographError(
            f"{path} is not a readable ecograph report ({type(exc).__name__}: {first}); "
            "write it again with 'ecograph optimize --report DIR'"
        ) from exc
    _, html_path = report.write(folder)
    con.say(table)
    con.say(f"HTML report: {html_path.resolve()}")
    return Done({"report": report.to_dict(), "html": str(html_path.resolve())})


def cmd_cache(args: argparse.Namespace, con: Console) -> Done:
    from ecograph.cache import CompileCache, describe

    cache = CompileCache(args.cache_dir)
    if args.action == "ls":
        entries = cache.entries()
        con.say(f"cache: {cache.root} ({len(entries)} entries)")
        for e in entries:
            con.say(describe(e))
        return Done(
            {
                "root": str(cache.root),
                "entries": [
                    {"digest": e.digest, "path": str(e.path), "bytes": e.bytes, "key": e.key}
                    for e in entries
                ],
            }
        )
    removed = cache.clear()
    con.say(f"removed {removed} entries from {cache.root}")
    return Done({"root": str(cache.root), "removed": removed})


def _load_array(path: Path) -> Any:
    """One array from an .npy file, without pickle; InputError naming the file otherwise."""
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except MemoryError as exc:
        raise InputError(f"{path}: too large to load into memory") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from exc


def _load_npz(path: Path) -> dict[str, Any]:
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except MemoryError as exc:
        raise InputError(f"{path}: too large to load into memory") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz archive of arrays ({exc})") from exc


def _input_feeds(specs: list[tuple[str, str]]) -> dict[str, Any]:
    """Feeds from --input NAME=FILE.npy (loaded without pickle)."""
    feeds: dict[str, Any] = {}
    for name, path in specs:
        if not Path(path).is_file():
            raise UsageError(f"--input {name}={path}: {path} does not exist")
        feeds[name] = _load_array(Path(path))
    return feeds


def load_calibration(folder: str, graph: Any) -> list[dict[str, Any]]:
    """The input sets in a --calibration folder, sorted by file name: each NAME.npz holds one
    array per graph input, named like it; each NAME.npy the input of a single-input model.
    Loaded without pickle; every array is checked against the graph input's dtype and shape."""
    names = [v.name for v in graph.inputs]
    how = (
        f"give a folder of .npz files, one input set each with arrays named {names} "
        "(numpy.savez), or of .npy files for a single-input model"
    )
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"--calibration {folder} is not a folder; {how}")
    files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())
    if not files:
        raise UsageError(f"--calibration {folder} holds no .npz or .npy files; {how}")
    sets: list[dict[str, Any]] = []
    for f in files:
        if f.suffix == ".npy":
            if len(names) != 1:
                raise InputError(
                    f"{f}: an .npy file holds one array and the model has {len(names)} inputs "
                    f"{names}; save each input set as an .npz with arrays named like them"
                )
            arrays = {names[0]: _load_array(f)}
        else:
            arrays = _load_npz(f)
        missing = [n for n in names if n not in arrays]
        unknown = sorted(set(arrays) - set(names))
        if missing or unknown:
            raise InputError(
                f"{f}: holds arrays {sorted(arrays)}, the graph inputs are {names} (missing "
                f"{missing}, unknown {unknown}); name each array like its graph input"
            )
        for v in graph.inputs:
            _check_input(f, v, arrays[v.name])
        sets.append({n: arrays[n] for n in names})
    return sets


def _check_input(source: Path, value: Any, array: Any) -> None:
    want = value.dtype.numpy
    shape = list(value.shape)
    fits = len(array.shape) == len(shape) and all(
        not isinstance(d, int) or d == n for d, n in zip(shape, array.shape, strict=True)
    )
    if array.dtype != want or not fits:
        raise InputError(
            f"{source}: array {value.name!r} is {array.dtype}{list(array.shape)}; the graph "
            f"input is {value.dtype.value}{shape}"
        )


def resolve(target: str) -> Any:
    """The TargetSpec for a --target value; a name TVM or ecograph does not know is a usage
    error. Resolved once, here; the spec travels down."""
    from ecograph.api import resolve_target

    try:
        return resolve_target(target)
    except BuildError as exc:
        raise UsageError(f"--target {target}: {exc}") from exc


def _runs_here(target: str) -> Any:
    """The TargetSpec for `target`, refused (UsageError) if its code cannot run here."""
    from ecograph.api import check_runs_here

    spec = resolve(target)
    try:
        check_runs_here(spec)
    except BuildError as exc:
        raise UsageError(str(exc)) from exc
    return spec


def cmd_optimize(args: argparse.Namespace, con: Console) -> Done:
    from ecograph.api import optimize
    from ecograph.quant.presets import QUANTIZE_PRESETS

    static = args.quantize is not None and QUANTIZE_PRESETS[args.quantize]["mode"] == "static"
    if static and args.calibration is None:
        raise UsageError(
            f"--quantize {args.quantize} calibrates activation ranges on real inputs: pass "
            "--calibration FOLDER (.npz files with arrays named like the graph inputs, or .npy "
            "files for a single-input model); ecograph does not calibrate on random data"
        )
    if args.calibration is not None and not static:
        raise UsageError(
            "--calibration is read by static quantization only; add --quantize int8-static "
            "or drop --calibration"
        )
    spec = resolve(args.target)
    # The model as the user gave it (an ONNX path, a torch module), so the report can compare
    # with its source framework (ONNX Runtime, torch eager); optimize() captures it.
    if Path(args.model).is_file():
        con.progress(f"loading {args.model}")
        model: Any = args.model
        inputs: Any = None
    else:
        model, inputs = load_model(args.model, con)
    calibration = None
    if args.calibration is not None:
        graph = load_model(args.model)[0] if isinstance(model, str) else to_graph(model, inputs)
        calibration = load_calibration(args.calibration, graph)
        con.progress(f"{len(calibration)} calibration input sets from {args.calibration}")
    examples = inputs
    if examples is None and calibration is not None:
        examples = calibration[0]
        con.note(f"the accuracy check runs on the first calibration set ({args.calibration})")
    elif examples is None:
        con.note(
            f"{args.model} has no example inputs: the accuracy check runs on random inputs of "
            "the declared shapes"
        )
    measure = args.report is not None and not args.no_measure
    con.progress(
        f"optimizing with pipeline {args.pipeline!r}"
        + (f", quantize {args.quantize}" if args.quantize else "")
        + f", compiling for {spec.describe()}"
        + (" and measuring" if measure else "")
    )
    with tempfile.TemporaryDirectory(prefix="ecograph-optimize-") as work:
        try:
            result = optimize(
                model,
                examples,
                target=spec,
                pipeline=args.pipeline,
                quantize=args.quantize,
                accuracy_budget=args.accuracy_budget,
                calibration_data=calibration,
                out_dir=work,
                measure=measure,
                declared_power_watts=args.declared_watts,
                progress=False if con.quiet else (True if con.verbose else None),
            )
        except AccuracyError as exc:
            raise AccuracyError(
                f"{exc} On the command line the budget is --accuracy-budget COSINE (now "
                f"{args.accuracy_budget or 'the default'})."
            ) from exc
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.to_onnx(out)
        report_dir = result.save(args.report) if args.report is not None else None
    ledger = "\n".join(str(r) for r in result.pass_records)
    before, after = len(result.original_graph.nodes), len(result.graph.nodes)
    accuracy = result.report.accuracy
    con.say(ledger)
    con.say(
        f"{before} -> {after} nodes; cosine {accuracy['cosine']:.6f} to the original; wrote {out}"
    )
    if not result.runs_here:
        con.note(
            f"the {spec.name} build does not run on this machine: accuracy was checked on a "
            "build for this host and nothing was measured (see the report's notes)"
        )
    data: dict[str, Any] = {
        "model": args.model,
        "output": str(out),
        "target": spec.describe(),
        "pipeline": args.pipeline,
        "quantization": result.quantization,
        "nodes_before": before,
        "nodes_after": after,
        "accuracy": accuracy,
        "runs_here": result.runs_here,
        "passes": [r.to_dict() for r in result.pass_records],
    }
    if report_dir is not None:
        con.say(f"report: {report_dir / 'report.html'} (and report.json, artifact/)")
        data["report_dir"] = str(report_dir)
        data["report"] = result.report.to_dict()
    return Done(data)


def _run_pipeline(graph: Any, pipeline: str | None, quantize: str | None) -> Any:
    """Run --pipeline and --quantize (a preset without calibration) on `graph` in place, for
    compile and profile; the recipe (backends.tvm.build.Recipe) the artifact records."""
    from ecograph.api import recipe_for
    from ecograph.passes import run_passes

    items: list[Any] = [pipeline] if pipeline else []
    qdesc = ""
    if quantize:
        from ecograph.quant.presets import quantize_pass

        qpass = quantize_pass(quantize, None)
        items.append(qpass)
        qdesc = qpass.describe()
    records = run_passes(graph, items).records if items else []
    return recipe_for(pipeline or "", qdesc, records)


def cmd_compile(args: argparse.Namespace, con: Console) -> Done:
    from tqdm.auto import tqdm

    from ecograph.backends.tvm import compile as tvm_compile

    model, inputs = load_model(args.model, con)
    graph = to_graph(model, inputs)
    con.progress(f"running pipeline {args.pipeline!r}, quantize {args.quantize or 'none'}")
    recipe = _run_pipeline(graph, args.pipeline, args.quantize)
    out = Path(args.output)
    rows = []
    results: list[dict[str, Any]] = []
    codes: list[int] = []
    for target in tqdm(args.target, desc="compiling", unit="target", disable=con.quiet):
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in target)
        con.progress(f"compiling for {target}")
        try:
            spec = resolve(target)
            path = tvm_compile(
                graph, spec, out / safe, tune=args.tune, recipe=recipe, progress=False
            )
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            rows.append((target, "ok", str(path), f"{size / 1024:.1f} KiB"))
            results.append({"target": target, "status": "ok", "artifact": str(path), "bytes": size})
        except EcographError as exc:
            codes.append(exc.exit_code)
            first = str(exc).splitlines()[0]
            rows.append((target, "FAILED", first[:90], ""))
            results.append(
                {
                    "target": target,
                    "status": "failed",
                    "error": str(exc),
                    "exit_code": exc.exit_code,
                }
            )
    header = ("target", "status", "artifact", "size")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        con.say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return Done({"targets": results, "recipe": recipe.to_dict()}, max(codes, default=0))


def cmd_run(args: argparse.Namespace, con: Console) -> Done:
    import numpy as np

    from ecograph.backends.tvm import load

    feeds = _input_feeds(args.input)
    con.progress(f"loading {args.artifact}")
    module = load(args.artifact, device=args.device)
    outputs = module(**feeds)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    names = [o["name"] for o in module.manifest.get("outputs", [])] or [
        f"output_{i}" for i in range(len(outputs))
    ]
    rows: list[dict[str, Any]] = []
    for name, arr in zip(names, outputs, strict=False):
        arr = np.asarray(arr)
        row: dict[str, Any] = {"name": name, "dtype": str(arr.dtype), "shape": list(arr.shape)}
        text = f"{name}: {arr.dtype}{list(arr.shape)}"
        if arr.size and arr.dtype.kind in "biuf":
            row["min"], row["max"] = float(arr.min()), float(arr.max())
            text += f" min {row['min']:.6g} max {row['max']:.6g}"
        if args.output_dir:
            folder = Path(args.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / f"{name}.npy", arr, allow_pickle=False)
            row["saved"] = str(folder / f"{name}.npy")
        con.say(text)
        rows.append(row)
    return Done({"artifact": args.artifact, "device": str(module.device), "outputs": rows})


def available_memory() -> int | None:
    """Bytes of memory available to allocate now (MemAvailable on Linux), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def random_feeds(specs: list[dict[str, Any]], dim: int) -> dict[str, Any]:
    """Random inputs for the manifest `specs` (symbolic dims = `dim`), refused (InputError
    naming the input and its size) before allocating when they do not fit in memory."""
    import numpy as np

    from ecograph.ir.dtypes import DType

    planned: list[tuple[str, list[int], Any]] = []
    total = 0
    limit = available_memory()
    for spec in specs:
        shape = [d if isinstance(d, int) else dim for d in spec["shape"]]
        dtype = DType.parse(spec["dtype"]).numpy
        size = math.prod(shape) * dtype.itemsize
        total += size
        if limit is not None and total > limit:
            raise InputError(
                f"input {spec['name']!r} would be {dtype}{shape} = {_human(size)}, more than the "
                f"{_human(limit)} of memory available; lower --dim or give the input with --input"
            )
        planned.append((spec["name"], shape, dtype))
    rng = np.random.default_rng(0)
    feeds: dict[str, Any] = {}
    for name, shape, dtype in planned:
        try:
            if dtype.kind == "f" or dtype.name == "bfloat16":
                feeds[name] = rng.standard_normal(shape).astype(dtype)
            else:
                feeds[name] = rng.integers(0, 2, shape).astype(dtype)
        except MemoryError as exc:
            raise InputError(
                f"input {name!r} ({dtype}{shape}) does not fit in memory; lower --dim"
            ) from exc
    return feeds


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def cmd_bench(args: argparse.Namespace, con: Console) -> Done:
    from ecograph.backends.tvm import load
    from ecograph.report.measure import measure_energy, measure_latency

    feeds = _input_feeds(args.input)
    con.progress(f"loading {args.artifact}")
    module = load(args.artifact, device=args.device)
    missing = [i for i in module.manifest.get("inputs", []) if i["name"] not in feeds]
    feeds.update(random_feeds(missing, args.dim))
    con.progress(f"timing {args.warmup} warm-up and {args.repeat} runs")
    lat = measure_latency(lambda: module(**feeds), warmup=args.warmup, repeat=args.repeat)
    device = "cuda" if module.manifest.get("target", {}).get("family") == "cuda" else "cpu"
    con.progress(f"measuring energy on {device}")
    energy = measure_energy(
        lambda: module(**feeds),
        device=device,
        latency=lat,
        declared_power_watts=args.declared_watts,
    )
    con.say(f"latency p50 {lat.p50_ms:.3f} ms  p90 {lat.p90_ms:.3f} ms  ({lat.runs} runs)")
    con.say(f"energy per inference: {energy.label()}")
    return Done(
        {
            "artifact": args.artifact,
            "device": device,
            "inputs": {name: list(a.shape) for name, a in feeds.items()},
            "latency": lat.to_dict(),
            "energy": energy.to_dict(),
        }
    )


def _is_artifact(text: str) -> bool:
    folder = Path(text)
    if not folder.is_dir():
        return False
    if not (folder / "manifest.json").is_file():
        raise UsageError(
            f"{folder} is a folder but not an ecograph artifact (no manifest.json); give an "
            "artifact folder written by 'ecograph compile', an .onnx file, "
            "'package.module:factory' or 'default'"
        )
    return True


def _example_dims(graph: Any, inputs: Any) -> dict[str, int]:
    """Sizes of the symbolic dims in a model's own example inputs (empty without them)."""
    if inputs is None:
        return {}
    from ecograph.api import feeds_for

    dims: dict[str, int] = {}
    feeds = feeds_for(graph, inputs)
    for v in graph.inputs:
        for d, n in zip(v.shape, feeds[v.name].shape, strict=False):
            if isinstance(d, str):
                dims.setdefault(d, int(n))
    return dims


def _check_binds(binds: dict[str, int], inputs: list[tuple[str, list[Any]]]) -> None:
    unknown = sorted(set(binds) - {str(d) for _, shape in inputs for d in shape})
    if unknown:
        raise UsageError(
            f"--bind {', '.join(unknown)}: no input has such a dim; the inputs are "
            + ", ".join(f"{name}{list(shape)}" for name, shape in inputs)
        )


def _compile_for_profile(
    args: argparse.Namespace, con: Console, out: Path
) -> tuple[Path, dict[str, int]]:
    """Compile MODEL for --target (through the compile cache) into `out`; the artifact and the
    symbolic dims of the model's example inputs."""
    from ecograph.api import compile_cached

    spec = _runs_here(args.target or "x86")  # before the compile: say now it cannot run here
    model, inputs = load_model(args.model, con)
    graph = to_graph(model, inputs)
    _check_binds(dict(args.bind), [(v.name, list(v.shape)) for v in graph.inputs])
    dims = _example_dims(graph, inputs)
    recipe = _run_pipeline(graph, args.pipeline, args.quantize)
    print(f"compiling {args.model} for {spec.describe()} ...", file=sys.stderr)
    return compile_cached(graph, spec, out, False, recipe, True), dims


def cmd_profile(args: argparse.Namespace, con: Console) -> Done:
    from ecograph.backends.tvm import load
    from ecograph.report.profile import profile_model, random_inputs

    binds = dict(args.bind)
    with tempfile.TemporaryDirectory(prefix="ecograph-profile-") as tmp:
        if _is_artifact(args.model):
            if args.target:
                raise UsageError(
                    f"{args.model} is an artifact folder, already built; drop --target (it "
                    "applies to MODEL, which is compiled first)"
                )
            artifact, dims = Path(args.model), {}
        else:
            artifact, dims = _compile_for_profile(args, con, Path(tmp) / "artifact")
        module = load(artifact)
        specs = module.manifest["inputs"]
        _check_binds(binds, [(s["name"], s["shape"]) for s in specs])
        feeds = random_inputs(specs, {**dims, **binds}, default_dim=1)
        profile = profile_model(module, feeds, repeat=args.repeat, warmup=args.warmup)
    data = profile.to_dict()
    data["inputs"] = {name: list(a.shape) for name, a in feeds.items()}
    shapes = ", ".join(f"{n}{list(a.shape)}" for n, a in feeds.items())
    con.say(
        f"profile of {args.model} on {profile.device} (target {profile.target}); inputs {shapes}"
    )
    con.say(profile.table())
    return Done(data)


def cmd_rpc_server(args: argparse.Namespace, con: Console) -> Done:
    from ecograph.backends.tvm import rpc

    rpc.serve(host=args.host or "127.0.0.1", port=args.port)
    return Done()


# ------------------------------------------------------------------- parser


class _ParseError(UsageError):
    """An argparse error, raised instead of argparse's exit so main() reports it like others."""

    def __init__(self, prog: str, message: str) -> None:
        self.prog = prog
        super().__init__(f"{message} (see '{prog} --help')")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _ParseError(self.prog, message)


class _Formatter(argparse.HelpFormatter):
    """The default wrapping, except for the exit-code table, kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("exit codes:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Version(argparse.Action):
    """--version: ecograph's, TVM's and Python's versions (TVM imported only here)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        print(version_text())
        parser.exit()


def version_text() -> str:
    import platform

    import ecograph

    try:
        import tvm

        tvm_version = f"TVM {tvm.__version__}"
    except Exception as exc:  # TVM is optional for inspect/optimize-to-ONNX: say why not
        tvm_version = f"TVM not importable ({type(exc).__name__}: {exc})"
    return (
        f"ecograph {ecograph.__version__}\n{tvm_version}\n"
        f"Python {platform.python_version()} ({sys.executable})"
    )


def _add_output_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--json/--quiet/--verbose/--debug, accepted before or after the command: on the
    sub-parsers they default to SUPPRESS so they do not overwrite a value given before."""
    default: Any = False if top else argparse.SUPPRESS
    group = parser.add_argument_group("output")
    group.add_argument(
        "--json",
        action="store_true",
        default=default,
        help="print the result (or the error) as JSON on stdout; human text is not printed",
    )
    loud = group.add_mutually_exclusive_group()
    loud.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="print only errors"
    )
    loud.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="print progress lines"
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="print the full traceback of any error",
    )


def build_parser() -> argparse.ArgumentParser:
    from ecograph.api import EXACT_BUDGET, QUANTIZED_BUDGET
    from ecograph.quant.presets import QUANTIZE_PRESETS

    parser = _Parser(
        prog="ecograph",
        description="Graph optimization for green neural-network and LLM inference.",
        epilog=EXIT_CODES,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--version", action=_Version, help="print ecograph's, TVM's and Python's versions"
    )
    _add_output_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_doc = MODEL_HELP
    dynamic_presets = sorted(p for p, o in QUANTIZE_PRESETS.items() if o["mode"] != "static")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, epilog=EXIT_CODES, formatter_class=_Formatter, **kwargs)
        _add_output_flags(p, top=False)
        return p

    p = command(
        "inspect",
        help="op histogram, parameters, bytes by dtype, FLOPs, unsupported ops",
        description="Print what a model is made of. " + model_doc,
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument(
        "--bind",
        action="append",
        default=[],
        type=_binding,
        metavar="SYM=N",
        help="bind a symbolic dim for the FLOPs estimate, e.g. --bind batch=1 --bind seq=128",
    )
    p.set_defaults(func=cmd_inspect)

    p = command(
        "optimize",
        help="apply a pass pipeline (and quantization), check accuracy, write ONNX and a report",
        description="Optimize MODEL with a pass pipeline (and quantization) through "
        "ecograph.optimize(): the result is compiled for --target and its outputs are "
        "checked against the original model's on the model's example inputs (else the first "
        "calibration set, else random inputs of the declared shapes); then it is written as "
        "ONNX to OUT.onnx and, with --report DIR, the compiled artifact and the report are "
        "written to DIR. " + model_doc,
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument(
        "--pipeline",
        default="default",
        help='pass pipeline spec (default: default), e.g. "default,quantize(mode=dynamic)"',
    )
    p.add_argument(
        "--quantize",
        default=None,
        choices=sorted(QUANTIZE_PRESETS),
        help="a quantization preset run after the pipeline; int8-static needs --calibration",
    )
    p.add_argument(
        "--calibration",
        default=None,
        metavar="FOLDER",
        help="input sets for --quantize int8-static: a folder of .npz files (one input set "
        "each, arrays named like the graph inputs) or of .npy files (single-input models); "
        "loaded without pickle",
    )
    p.add_argument(
        "--accuracy-budget",
        type=_cosine_budget,
        default=None,
        metavar="COSINE",
        help="minimum cosine similarity of the outputs to the original model's (default "
        f"{EXACT_BUDGET}, or {QUANTIZED_BUDGET} when quantized); with --quantize, the most "
        "sensitive layers stay in float until it holds; exit code 4 when it cannot",
    )
    p.add_argument(
        "--target",
        default="x86",
        help="the target to compile for (default x86; the names 'ecograph compile' takes); "
        "a target this machine cannot run is still compiled, its accuracy is checked on a "
        "build for this host and nothing is measured",
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="write report.json, report.html and the compiled artifact (DIR/artifact) here",
    )
    p.add_argument(
        "--no-measure",
        action="store_true",
        help="with --report: do not measure latency and energy (they are measured by default)",
    )
    p.add_argument(
        "--declared-watts",
        type=_positive_float,
        default=None,
        metavar="WATTS",
        help="power figure used to ESTIMATE the report's energy where no counter exists",
    )
    p.set_defaults(func=cmd_optimize)

    p = command(
        "compile",
        help="compile for one or more targets (one artifact folder each) with a summary",
        description="Cross-compile MODEL for every --target into OUT/<target>/. " + model_doc,
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument(
        "--target",
        action="append",
        required=True,
        help="x86, x86:<cpu>, arm, arm:<cpu>, cuda, cuda:sm_XX (repeatable)",
    )
    p.add_argument("-o", "--output", default="build", metavar="OUT")
    p.add_argument("--pipeline", default="default", help="pass pipeline spec (default: default)")
    p.add_argument(
        "--quantize",
        default=None,
        choices=dynamic_presets,
        help="a quantization preset run after the pipeline (int8-static needs calibration: "
        "use 'ecograph optimize --calibration FOLDER --report DIR')",
    )
    p.add_argument(
        "--tune",
        type=_int_at_least(0),
        default=0,
        metavar="TRIALS",
        help="MetaSchedule trials (0: no tuning; results are cached)",
    )
    p.set_defaults(func=cmd_compile)

    p = command(
        "run",
        help="run an artifact on inputs from .npy files",
        description="Run ARTIFACT (a folder written by compile) and print or save its outputs.",
    )
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument(
        "--input", action="append", default=[], type=_input_file, metavar="NAME=FILE.npy"
    )
    p.add_argument(
        "--device", default=None, type=_device, help="cpu, cuda or cuda:N (default: the target's)"
    )
    p.add_argument("--output-dir", default=None, help="save each output as NAME.npy here")
    p.set_defaults(func=cmd_run)

    p = command(
        "bench",
        help="latency p50/p90 and energy per inference of an artifact",
        description="Benchmark ARTIFACT; inputs not given are random, symbolic dims = --dim. "
        "Random inputs that would not fit in the memory available are refused (exit code 3).",
    )
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument(
        "--input", action="append", default=[], type=_input_file, metavar="NAME=FILE.npy"
    )
    p.add_argument(
        "--device", default=None, type=_device, help="cpu, cuda or cuda:N (default: the target's)"
    )
    p.add_argument(
        "--dim", type=_int_at_least(1), default=1, help="size for symbolic dims (default 1)"
    )
    p.add_argument("--warmup", type=_int_at_least(0), default=5, help="untimed runs (default 5)")
    p.add_argument("--repeat", type=_int_at_least(1), default=50, help="timed runs (default 50)")
    p.add_argument(
        "--declared-watts",
        type=_positive_float,
        default=None,
        metavar="WATTS",
        help="power figure used to ESTIMATE energy where no counter exists",
    )
    p.set_defaults(func=cmd_bench)

    p = command(
        "profile",
        help="where the time goes: per-kernel time and the schedule rule of each kernel",
        description="Compile MODEL for --target (through the compile cache) or take an "
        "ARTIFACT_DIR, run it on random inputs of the declared shapes with an instrument on the "
        "Relax VM, and print each kernel's calls, time and share per inference with the rule "
        "that scheduled it; kernels no rule scheduled are marked '!'. Shares are of the "
        "instrumented time; the time without the instrument is printed too. " + model_doc,
    )
    p.add_argument("model", metavar="MODEL|ARTIFACT_DIR")
    p.add_argument(
        "--target",
        default=None,
        help="x86 (default), x86:<cpu> or cuda: a target this machine can run",
    )
    p.add_argument("--pipeline", default="default", help="pass pipeline before compiling")
    p.add_argument(
        "--quantize",
        default=None,
        choices=dynamic_presets,
        help="a quantization preset run after the pipeline",
    )
    p.add_argument("--repeat", type=_int_at_least(1), default=20, help="profiled runs (default 20)")
    p.add_argument(
        "--warmup", type=_int_at_least(0), default=3, help="runs before timing (default 3)"
    )
    p.add_argument(
        "--bind",
        action="append",
        default=[],
        type=_binding,
        metavar="SYM=N",
        help="size of a symbolic dim, e.g. --bind batch=1 --bind seq=128 (default: the "
        "model's example inputs, else 1)",
    )
    p.set_defaults(func=cmd_profile)

    p = command(
        "rpc-server",
        help="start a TVM RPC server (127.0.0.1 unless --host is given)",
        description="Serve TVM RPC for ecograph.remote. WARNING: TVM RPC runs arbitrary code "
        "for whoever connects; it binds 127.0.0.1 unless you pass --host explicitly.",
    )
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=_int_at_least(1), default=9091)
    p.set_defaults(func=cmd_rpc_server)

    p = command(
        "report",
        help="write (and print the path of) the HTML report of a result folder",
        description="Re-render report.html from report.json in RESULT_DIR (written by "
        "'ecograph optimize --report DIR' or optimize().save()) and print the table.",
    )
    p.add_argument("result_dir", metavar="RESULT_DIR")
    p.set_defaults(func=cmd_report)

    p = command(
        "cache",
        help="list or clear the compile cache",
        description="List (ls) or delete (clear) compile-cache entries.",
    )
    p.add_argument("action", choices=["ls", "clear"])
    p.add_argument(
        "--cache-dir",
        default=None,
        help="cache folder (default: $ECOGRAPH_CACHE_DIR or ~/.cache/ecograph)",
    )
    p.set_defaults(func=cmd_cache)
    return parser


# --------------------------------------------------------------------- main


def _fail(
    exc: BaseException, message: str, code: int, *, prefix: str, as_json: bool, debug: bool
) -> int:
    """Report an error: the traceback with --debug, one line on stderr, and the JSON object
    on stdout with --json."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"{prefix}: error: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": message, "exit_code": code}))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit code (see EXIT_CODES)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before parsing succeeds there are no args: read the flags that shape error output.
    as_json, debug = "--json" in argv, "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
    except _ParseError as exc:
        return _fail(exc, str(exc), exc.exit_code, prefix=exc.prog, as_json=as_json, debug=debug)
    con = Console(json=args.json, quiet=args.quiet, verbose=args.verbose)
    prefix = f"ecograph {args.command}"
    try:
        with con.capture():
            done = args.func(args, con)
    except EcographError as exc:
        return _fail(
            exc, str(exc), exc.exit_code, prefix=prefix, as_json=args.json, debug=args.debug
        )
    except KeyboardInterrupt as exc:
        return _fail(exc, "interrupted", 130, prefix=prefix, as_json=args.json, debug=args.debug)
    except Exception as exc:  # a bug in ecograph: one line, the traceback with --debug
        first = (str(exc).splitlines() or [""])[0]
        message = (
            f"internal error: {type(exc).__name__}: {first} (run with --debug for the "
            "traceback; please report it)"
        )
        return _fail(exc, message, 1, prefix=prefix, as_json=args.json, debug=args.debug)
    if args.json:
        print(json.dumps(done.data, indent=2, default=str))
    return done.exit_code


if __name__ == "__main__":
    sys.exit(main())
