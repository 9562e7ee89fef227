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
