"""The argument parser and main(): maps every error to its exit code."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from ecograph.cli.commands import (
    cmd_bench,
    cmd_cache,
    cmd_compile,
    cmd_generate,
    cmd_inspect,
    cmd_optimize,
    cmd_profile,
    cmd_prune,
    cmd_report,
    cmd_rpc_server,
    cmd_run,
)
from ecograph.cli.console import EXIT_CODES, MODEL_HELP, Console
from ecograph.cli.inputs import (
    binding,
    cosine_budget,
    device_arg,
    input_file,
    int_at_least,
    positive_float,
)
from ecograph.errors import EcographError, UsageError


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


def _add_artifact_args(p: argparse.ArgumentParser) -> None:
    """ARTIFACT, --input and --device: what `run` and `bench` share."""
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--input", action="append", default=[], type=input_file, metavar="NAME=FILE.npy")
    p.add_argument(
        "--device",
        default=None,
        type=device_arg,
        help="cpu, cuda or cuda:N (default: the target's)",
    )


def prune_ratios(text: str) -> dict[str, float]:
    """--ratios KIND=R,KIND=R (e.g. ffn=0.5,layers=0.5); kinds and ranges are checked by
    compress(), which names the kind."""
    ratios: dict[str, float] = {}
    for part in text.split(","):
        kind, sep, value = part.strip().partition("=")
        try:
            ratios[kind] = float(value)
        except ValueError:
            sep = ""
        if not sep or not kind:
            raise argparse.ArgumentTypeError(
                f"expected KIND=RATIO,... (e.g. ffn=0.5,layers=0.5), got {text!r}"
            )
    return ratios


def build_parser() -> argparse.ArgumentParser:
    from ecograph.api import EXACT_BUDGET, QUANTIZED_BUDGET, REQUANTIZING_BUDGET
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
        type=binding,
        metavar="SYM=N",
        help="bind a symbolic dim for the FLOPs estimate, e.g. --bind batch=1 --bind seq=128",
    )
    p.add_argument(
        "--prunable",
        action="store_true",
        help="list the structured-pruning dependency groups (channels, heads, ffn, layer, "
        "residual) with their sizes, and why a frozen one cannot shrink (docs/pruning.md)",
    )
    p.add_argument(
        "--pipeline",
        default=None,
        metavar="SPEC",
        help="with --prunable: run this pass pipeline first (e.g. default), as optimize would",
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
        type=cosine_budget,
        default=None,
        metavar="COSINE",
        help="minimum cosine similarity of the outputs to the original model's (default "
        f"{EXACT_BUDGET}; {REQUANTIZING_BUDGET} for a model that quantizes its own "
        f"activations, such as ONNX Runtime's int8 models; {QUANTIZED_BUDGET} when quantized); "
        "with --quantize, the most sensitive layers stay in float until it holds; exit code 4 "
        "when it cannot",
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
        type=positive_float,
        default=None,
        metavar="WATTS",
        help="power figure used to ESTIMATE the report's energy where no counter exists",
    )
    p.add_argument(
        "--weights-codec",
        choices=["none", "zstd", "ans"],
        default="none",
        help="entropy-code the artifact's weights file, lossless, decoded at load (default "
        "none; docs/weights.md)",
    )
    p.set_defaults(func=cmd_optimize)

    p = command(
        "prune",
        help="structured pruning (layers, FFN units, heads, channels) kept only if faster",
        description="Prune MODEL through ecograph.compress(): each candidate is scored on "
        "--validation (mean cosine of the outputs to the original's), compiled for --target "
        "and timed; one not measurably faster than the unpruned build (p50 not below 0.95x) "
        "is rolled back. --ratios prunes as given; --auto searches a small grid for the "
        "fastest candidate within --budget (docs/pruning.md). The result is written as ONNX "
        "to OUT.onnx and, with --report DIR, the artifact and the report (with the "
        "candidates tried) to DIR. " + model_doc,
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--ratios",
        type=prune_ratios,
        default=None,
        metavar="KIND=R,...",
        help="ratios per group kind, e.g. ffn=0.5,layers=0.5 (kinds: layers = transformer "
        "blocks, ffn, heads, channels)",
    )
    how.add_argument(
        "--auto", action="store_true", help="search the ratios under --budget (needs --budget)"
    )
    p.add_argument(
        "--budget",
        type=cosine_budget,
        default=None,
        metavar="COSINE",
        help="minimum mean cosine to the original on --validation; exit code 4 when missed",
    )
    p.add_argument(
        "--validation",
        required=True,
        metavar="DIR",
        help="validation input sets: a folder of .npz files (arrays named like the graph "
        "inputs) or .npy files (single-input models), as --calibration of optimize",
    )
    p.add_argument(
        "--train",
        default=None,
        metavar="DIR",
        help="training input sets (same format): importance is scored on them, and "
        "--distill trains on them",
    )
    p.add_argument(
        "--distill", action="store_true", help="distill each pruned candidate (needs --train)"
    )
    p.add_argument(
        "--no-reconstruct",
        dest="reconstruct",
        action="store_false",
        help="slice only: do not refit the projections that lost FFN units or heads by least "
        "squares on --train (without --train nothing is refit anyway)",
    )
    p.add_argument("--target", default="x86", help="the target to compile and time on (x86)")
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="write report.json, report.html and the compiled artifact (DIR/artifact) here",
    )
    p.set_defaults(func=cmd_prune)

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
        type=int_at_least(0),
        default=0,
        metavar="TRIALS",
        help="MetaSchedule trials (0: no tuning; results are cached)",
    )
    p.add_argument(
        "--weights-codec",
        choices=["none", "zstd", "ans"],
        default="none",
        help="entropy-code each artifact's weights file (params.ecw), lossless, decoded at "
        "load; the weights are then kept out of lib.so (default none; docs/weights.md)",
    )
    p.set_defaults(func=cmd_compile)

    p = command(
        "run",
        help="run an artifact on inputs from .npy files",
        description="Run ARTIFACT (a folder written by compile) and print or save its outputs.",
    )
    _add_artifact_args(p)
    p.add_argument("--output-dir", default=None, help="save each output as NAME.npy here")
    p.set_defaults(func=cmd_run)

    p = command(
        "generate",
        help="generate text with a compiled LM (ecograph.compile_lm): tokens/s, first token",
        description="Continue --prompt with the LM in DIR (a folder written by "
        "ecograph.compile_lm or CompiledLM.save). With a tokenizer in DIR the prompt is text; "
        "without one (or with --token-ids) it is token ids separated by spaces, e.g. '1 2 3'. "
        "Prints the text (or the tokens), time to first token, decode tokens/s and energy "
        "per token where a counter exists.",
    )
    p.add_argument("lm_dir", metavar="DIR")
    p.add_argument("--prompt", required=True, help="text, or token ids like '1 2 3'")
    p.add_argument(
        "--token-ids",
        action="store_true",
        help="read --prompt as token ids even when DIR holds a tokenizer",
    )
    p.add_argument(
        "--max-new-tokens", type=int_at_least(1), default=32, help="tokens to add (default 32)"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0 (default): greedy; above 0: sample from softmax(logits / T)",
    )
    p.add_argument(
        "--top-k", type=int_at_least(1), default=None, help="sample among the K most likely"
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the sampler")
    p.add_argument(
        "--device",
        default=None,
        type=device_arg,
        help="cpu, cuda or cuda:N (default: the target's)",
    )
    p.add_argument(
        "--declared-watts",
        type=positive_float,
        default=None,
        metavar="WATTS",
        help="power figure used to ESTIMATE energy per token where no counter exists",
    )
    p.set_defaults(func=cmd_generate)

    p = command(
        "bench",
        help="latency p50/p90 and energy per inference of an artifact",
        description="Benchmark ARTIFACT; inputs not given are random, symbolic dims = --dim. "
        "Random inputs that would not fit in the memory available are refused (exit code 3).",
    )
    _add_artifact_args(p)
    p.add_argument(
        "--dim", type=int_at_least(1), default=1, help="size for symbolic dims (default 1)"
    )
    p.add_argument("--warmup", type=int_at_least(0), default=5, help="untimed runs (default 5)")
    p.add_argument("--repeat", type=int_at_least(1), default=50, help="timed runs (default 50)")
    p.add_argument(
        "--declared-watts",
        type=positive_float,
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
    p.add_argument("--repeat", type=int_at_least(1), default=20, help="profiled runs (default 20)")
    p.add_argument(
        "--warmup", type=int_at_least(0), default=3, help="runs before timing (default 3)"
    )
    p.add_argument(
        "--bind",
        action="append",
        default=[],
        type=binding,
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
    p.add_argument("--port", type=int_at_least(1), default=9091)
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
