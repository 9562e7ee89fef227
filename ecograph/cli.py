"""The `ecograph` command line. Every command has --help.

MODEL arguments are an .onnx file, a Python reference `package.module:factory` whose factory
returns (torch module, example inputs) or an ecograph Graph, or `default` for the bundled
encoder block.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ecograph.errors import EcographError


def load_model(spec: str) -> tuple[Any, Any]:
    """(graph or torch module, example inputs or None) for a MODEL argument."""
    if spec == "default":
        from ecograph.models import build_default_model, example_inputs

        return build_default_model(), example_inputs()
    if spec.endswith(".onnx") or Path(spec).is_file():
        from ecograph.frontend.onnx import from_onnx

        return from_onnx(spec), None
    if ":" not in spec:
        raise EcographError(
            f"MODEL {spec!r} is neither an existing .onnx file nor 'package.module:factory'"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EcographError(f"cannot import {module_name!r} for MODEL {spec!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise EcographError(f"{module_name} has no callable {attr!r} (MODEL {spec!r})")
    made = factory()
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


def cmd_inspect(args: argparse.Namespace) -> int:
    from ecograph.ir import registered_ops
    from ecograph.ir.stats import graph_stats

    model, inputs = load_model(args.model)
    graph = to_graph(model, inputs)
    bindings = dict(_parse_binding(b) for b in args.bind)
    stats = graph_stats(graph, bindings)
    print(f"model: {args.model} ({graph.name})")
    print("inputs: " + ", ".join(f"{v.name}: {v.type}" for v in graph.inputs))
    print("outputs: " + ", ".join(f"{v.name}: {v.type}" for v in graph.outputs))
    print(stats.summary())
    known = {(s.domain, s.op_type) for s in registered_ops()}
    unknown = sorted({n.qualified_op for n in graph.nodes if (n.domain, n.op_type) not in known})
    print("unsupported ops: " + (", ".join(unknown) if unknown else "none"))
    return 0


def _parse_binding(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not value.isdigit():
        raise EcographError(f"--bind expects NAME=INT, got {text!r}")
    return name, int(value)


def cmd_report(args: argparse.Namespace) -> int:
    from ecograph.report.green import read_report

    report = read_report(args.result_dir)
    _, html_path = report.write(args.result_dir)
    print(report.table())
    print(f"HTML report: {html_path.resolve()}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from ecograph.cache import CompileCache, describe

    cache = CompileCache(args.cache_dir)
    if args.action == "ls":
        entries = cache.entries()
        print(f"cache: {cache.root} ({len(entries)} entries)")
        for e in entries:
            print(describe(e))
    else:
        print(f"removed {cache.clear()} entries from {cache.root}")
    return 0


def _feeds(graph: Any, inputs: Any, specs: list[str]) -> dict[str, Any]:
    """Feeds from --input NAME=file.npy (loaded without pickle) over the example inputs."""
    import numpy as np

    from ecograph.api import feeds_for

    feeds = feeds_for(graph, inputs) if graph is not None else {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise EcographError(f"--input expects NAME=FILE.npy, got {spec!r}")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise EcographError(f"cannot read --input {name} from {path}: {exc}") from exc
    return feeds


def cmd_optimize(args: argparse.Namespace) -> int:
    from ecograph.frontend.onnx import to_onnx
    from ecograph.passes import run_passes

    model, inputs = load_model(args.model)
    graph = to_graph(model, inputs)
    before = len(graph.nodes)
    items: list[Any] = [args.pipeline]
    if args.quantize:
        from ecograph.quant.presets import quantize_pass

        calib = [_feeds(graph, inputs, [])] if args.quantize == "int8-static" else None
        items.append(quantize_pass(args.quantize, calib))
    result = run_passes(graph, items)
    print(result.ledger())
    to_onnx(graph, args.output)
    print(f"{before} -> {len(graph.nodes)} nodes; wrote {args.output}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ecograph.api import resolve_target
    from ecograph.backends.tvm import compile as tvm_compile
    from ecograph.passes import run_passes

    model, inputs = load_model(args.model)
    graph = to_graph(model, inputs)
    items: list[Any] = [args.pipeline] if args.pipeline else []
    if args.quantize:
        from ecograph.quant.presets import quantize_pass

        items.append(quantize_pass(args.quantize, None))
    if items:
        run_passes(graph, items)
    out = Path(args.output)
    rows = []
    failed = 0
    for target in tqdm(args.target, desc="compiling", unit="target"):
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in target)
        try:
            spec = resolve_target(target)  # once, here; the spec travels down
            path = tvm_compile(graph, spec, out / safe, tune=args.tune, progress=False)
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            rows.append((target, "ok", str(path), f"{size / 1024:.1f} KiB"))
        except EcographError as exc:
            failed += 1
            rows.append((target, "FAILED", str(exc).splitlines()[0][:90], ""))
    widths = [
        max(len(r[i]) for r in [("target", "status", "artifact", "size"), *rows]) for i in range(4)
    ]
    for r in [("target", "status", "artifact", "size"), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from ecograph.backends.tvm import load

    module = load(args.artifact, device=args.device)
    feeds = _feeds(None, None, args.input)
    outputs = module(**feeds)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    names = [o["name"] for o in module.manifest.get("outputs", [])] or [
        f"output_{i}" for i in range(len(outputs))
    ]
    for name, arr in zip(names, outputs, strict=False):
        arr = np.asarray(arr)
        print(f"{name}: {arr.dtype}{list(arr.shape)} min {arr.min():.6g} max {arr.max():.6g}")
        if args.output_dir:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            np.save(Path(args.output_dir) / f"{name}.npy", arr, allow_pickle=False)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import numpy as np

    from ecograph.backends.tvm import load
    from ecograph.report.measure import measure_energy, measure_latency

    module = load(args.artifact, device=args.device)
    feeds = _feeds(None, None, args.input)
    missing = [i for i in module.manifest.get("inputs", []) if i["name"] not in feeds]
    rng = np.random.default_rng(0)
    for spec in missing:
        shape = [d if isinstance(d, int) else args.dim for d in spec["shape"]]
        dtype = np.dtype(spec["dtype"]) if spec["dtype"] != "bfloat16" else np.float32
        feeds[spec["name"]] = (
            rng.standard_normal(shape).astype(dtype)
            if dtype.kind == "f"
            else rng.integers(0, 2, shape).astype(dtype)
        )
    lat = measure_latency(lambda: module(**feeds), warmup=args.warmup, repeat=args.repeat)
    device = "cuda" if module.manifest.get("target", {}).get("family") == "cuda" else "cpu"
    energy = measure_energy(
        lambda: module(**feeds),
        device=device,
        latency=lat,
        declared_power_watts=args.declared_watts,
    )
    print(f"latency p50 {lat.p50_ms:.3f} ms  p90 {lat.p90_ms:.3f} ms  ({lat.runs} runs)")
    print(f"energy per inference: {energy.label()}")
    return 0


def _is_artifact(text: str) -> bool:
    folder = Path(text)
    if not folder.is_dir():
        return False
    if not (folder / "manifest.json").is_file():
        raise EcographError(
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
        raise EcographError(
            f"--bind {', '.join(unknown)}: no input has such a dim; the inputs are "
            + ", ".join(f"{name}{list(shape)}" for name, shape in inputs)
        )


def _compile_for_profile(args: argparse.Namespace, out: Path) -> tuple[Path, dict[str, int]]:
    """Compile MODEL for --target (through the compile cache) into `out`; the artifact and the
    symbolic dims of the model's example inputs."""
    from ecograph.api import check_runs_here, compile_cached, resolve_target
    from ecograph.passes import run_passes

    spec = resolve_target(args.target or "x86")  # once, here; the spec travels down
    check_runs_here(spec)  # before the compile: say now that it cannot run here
    model, inputs = load_model(args.model)
    graph = to_graph(model, inputs)
    binds = dict(_parse_binding(b) for b in args.bind)
    _check_binds(binds, [(v.name, list(v.shape)) for v in graph.inputs])
    dims = _example_dims(graph, inputs)
    items: list[Any] = [args.pipeline] if args.pipeline else []
    if args.quantize:
        from ecograph.quant.presets import quantize_pass

        items.append(quantize_pass(args.quantize, None))
    if items:
        run_passes(graph, items)
    print(f"compiling {args.model} for {spec.describe()} ...", file=sys.stderr)
    recipe = [str(i) if isinstance(i, str) else i.describe() for i in items]
    return compile_cached(graph, spec, out, False, recipe, True), dims


def cmd_profile(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from ecograph.backends.tvm import load
    from ecograph.report.profile import profile_model, random_inputs

    binds = dict(_parse_binding(b) for b in args.bind)
    with tempfile.TemporaryDirectory(prefix="ecograph-profile-") as tmp:
        if _is_artifact(args.model):
            if args.target:
                raise EcographError(
                    f"{args.model} is an artifact folder, already built; drop --target (it "
                    "applies to MODEL, which is compiled first)"
                )
            artifact, dims = Path(args.model), {}
        else:
            artifact, dims = _compile_for_profile(args, Path(tmp) / "artifact")
        module = load(artifact)
        specs = module.manifest["inputs"]
        _check_binds(binds, [(s["name"], s["shape"]) for s in specs])
        feeds = random_inputs(specs, {**dims, **binds}, default_dim=1)
        profile = profile_model(module, feeds, repeat=args.repeat, warmup=args.warmup)
    if args.json:
        data = profile.to_dict()
        data["inputs"] = {name: list(a.shape) for name, a in feeds.items()}
        print(json.dumps(data, indent=2))
        return 0
    shapes = ", ".join(f"{n}{list(a.shape)}" for n, a in feeds.items())
    print(f"profile of {args.model} on {profile.device} (target {profile.target}); inputs {shapes}")
    print(profile.table())
    return 0


def cmd_rpc_server(args: argparse.Namespace) -> int:
    from ecograph.backends.tvm import rpc

    rpc.serve(host=args.host or "127.0.0.1", port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecograph",
        description="Graph optimization for green neural-network and LLM inference.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "inspect",
        help="op histogram, parameters, bytes by dtype, FLOPs, unsupported ops",
        description="Print what a model is made of. " + __doc__.split("\n\n")[1],
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="SYM=N",
        help="bind a symbolic dim for the FLOPs estimate, e.g. --bind batch=1 --bind seq=128",
    )
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "optimize",
        help="apply a pass pipeline (and quantization) and write ONNX",
        description="Optimize MODEL with a pass pipeline and write the result as ONNX.",
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
        help="a preset run after the pipeline: int8, int8-static, int8-weight or int4",
    )
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser(
        "compile",
        help="compile for one or more targets (one artifact folder each) with a summary",
        description="Cross-compile MODEL for every --target into OUT/<target>/.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument(
        "--target",
        action="append",
        required=True,
        help="x86, x86:<cpu>, arm, arm:<cpu>, cuda, cuda:sm_XX (repeatable)",
    )
    p.add_argument("-o", "--output", default="build", metavar="OUT")
    p.add_argument("--pipeline", default="default")
    p.add_argument("--quantize", default=None, help="int8, int8-weight or int4")
    p.add_argument(
        "--tune",
        type=int,
        default=0,
        metavar="TRIALS",
        help="MetaSchedule trials (0: no tuning; results are cached)",
    )
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser(
        "run",
        help="run an artifact on inputs from .npy files",
        description="Run ARTIFACT (a folder written by compile) and print or save its outputs.",
    )
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the target's)")
    p.add_argument("--output-dir", default=None, help="save each output as NAME.npy here")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "bench",
        help="latency p50/p90 and energy per inference of an artifact",
        description="Benchmark ARTIFACT; inputs not given are random, symbolic dims = --dim.",
    )
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    p.add_argument("--device", default=None)
    p.add_argument("--dim", type=int, default=1, help="size for symbolic dims (default 1)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument(
        "--declared-watts",
        type=float,
        default=None,
        help="power figure used to ESTIMATE energy where no counter exists",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "profile",
        help="where the time goes: per-kernel time and the schedule rule of each kernel",
        description="Compile MODEL for --target (through the compile cache) or take an "
        "ARTIFACT_DIR, run it on random inputs of the declared shapes with an instrument on the "
        "Relax VM, and print each kernel's calls, time and share per inference with the rule "
        "that scheduled it; kernels no rule scheduled are marked '!'. Shares are of the "
        "instrumented time; the time without the instrument is printed too. "
        + __doc__.split("\n\n")[1],
    )
    p.add_argument("model", metavar="MODEL|ARTIFACT_DIR")
    p.add_argument(
        "--target",
        default=None,
        help="x86 (default), x86:<cpu> or cuda: a target this machine can run",
    )
    p.add_argument("--pipeline", default="default", help="pass pipeline before compiling")
    p.add_argument("--quantize", default=None, help="int8, int8-weight or int4")
    p.add_argument("--repeat", type=int, default=20, help="profiled runs (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="runs before timing (default 3)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="SYM=N",
        help="size of a symbolic dim, e.g. --bind batch=1 --bind seq=128 (default: the "
        "model's example inputs, else 1)",
    )
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "rpc-server",
        help="start a TVM RPC server (127.0.0.1 unless --host is given)",
        description="Serve TVM RPC for ecograph.remote. WARNING: TVM RPC runs arbitrary code "
        "for whoever connects; it binds 127.0.0.1 unless you pass --host explicitly.",
    )
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=9091)
    p.set_defaults(func=cmd_rpc_server)

    p = sub.add_parser(
        "report",
        help="write (and print the path of) the HTML report of a result folder",
        description="Re-render report.html from report.json in RESULT_DIR and print the table.",
    )
    p.add_argument("result_dir", metavar="RESULT_DIR")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except EcographError as exc:
        print(f"ecograph {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
