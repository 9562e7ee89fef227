"""The command line's commands: one `cmd_*` function per subcommand."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

from ecograph.cli.console import Console, Done
from ecograph.cli.inputs import (
    check_binds,
    example_dims,
    input_feeds,
    is_artifact,
    load_calibration,
    load_model,
    random_feeds,
    resolve,
    spec_that_runs_here,
    to_graph,
)
from ecograph.errors import AccuracyError, EcographError, UsageError


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
    data: dict[str, Any] = {
        "model": args.model,
        "graph": graph.name,
        "inputs": [{"name": v.name, "type": str(v.type)} for v in graph.inputs],
        "outputs": [{"name": v.name, "type": str(v.type)} for v in graph.outputs],
        "stats": dataclasses.asdict(stats),
        "unsupported_ops": unknown,
    }
    if args.prunable:
        data["prunable"] = prunable_groups(graph, args.pipeline, con)
    return Done(data)


def prunable_groups(graph: Any, pipeline: str | None, con: Console) -> list[dict[str, Any]]:
    """Print (and return) the graph's pruning dependency groups, after `pipeline` if given."""
    from ecograph.passes import PassManager
    from ecograph.prune import groups

    if pipeline:
        graph = graph.copy()
        PassManager([pipeline]).run(graph)
    found = groups(graph)
    where = f" after pipeline {pipeline!r}" if pipeline else " (as captured)"
    open_ = [g for g in found if not g.frozen]
    con.say(f"prunable groups{where}: {len(open_)} of {len(found)} can shrink")
    for g in found:
        con.say(f"  {g}")
    return [
        {"name": g.name, "kind": g.kind, "size": g.size, "frozen": g.frozen, "nodes": len(g.nodes)}
        for g in found
    ]


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


def cmd_optimize(args: argparse.Namespace, con: Console) -> Done:
    from ecograph.api import optimize
    from ecograph.quant import quantization_notes
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
                weights_codec=args.weights_codec,
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
    for note in quantization_notes(result.pass_records):
        con.note(note)
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


def cmd_prune(args: argparse.Namespace, con: Console) -> Done:
    """`ecograph prune`: ecograph.compress() with --ratios or --auto on --validation data."""
    from ecograph.prune.compress import compress

    if (args.ratios is None) == (not args.auto):
        raise UsageError(
            "give either --ratios KIND=R,... (e.g. ffn=0.5,layers=0.5) or --auto --budget COSINE"
        )
    if args.auto and args.budget is None:
        raise UsageError("--auto chooses ratios under an accuracy budget: add --budget COSINE")
    if args.distill and args.train is None:
        raise UsageError("--distill trains the pruned model on --train DIR: add --train DIR")
    spec = resolve(args.target)
    if Path(args.model).is_file():
        con.progress(f"loading {args.model}")
        model: Any = args.model
        inputs: Any = None
        graph = load_model(args.model)[0]
    else:
        model, inputs = load_model(args.model, con)
        graph = to_graph(model, inputs)
    validation = load_calibration(args.validation, graph, "--validation")
    train = load_calibration(args.train, graph, "--train") if args.train is not None else None
    con.progress(
        f"{len(validation)} validation and {len(train or [])} training input sets; pruning "
        f"{'auto' if args.auto else args.ratios} for {spec.describe()}"
    )
    with tempfile.TemporaryDirectory(prefix="ecograph-prune-") as work:
        try:
            result = compress(
                model,
                inputs,
                prune="auto" if args.auto else args.ratios,
                validation_data=validation,
                train_data=train,
                distill=args.distill,
                reconstruct=args.reconstruct,
                accuracy_budget=args.budget,
                target=spec,
                out_dir=work,
                progress=con.progress,
            )
        except AccuracyError as exc:
            raise AccuracyError(
                f"{exc} On the command line the budget is --budget COSINE (now {args.budget})."
            ) from exc
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.to_onnx(out)
        report_dir = result.save(args.report) if args.report is not None else None
    report = result.report
    chosen = next((c for c in report.candidates if c.status == "chosen"), None)
    con.say(report.table())
    for note in report.notes:
        if note.startswith("ROLLED BACK"):
            con.note(note)
    con.say(f"chosen: {chosen.label if chosen else 'unpruned (nothing kept)'}; wrote {out}")
    data: dict[str, Any] = {
        "model": args.model,
        "output": str(out),
        "target": spec.describe(),
        "chosen": chosen.label if chosen else None,
        "accuracy": report.accuracy,
        "candidates": [dataclasses.asdict(c) for c in report.candidates],
        "notes": report.notes,
    }
    if report_dir is not None:
        con.say(f"report: {report_dir / 'report.html'} (and report.json, artifact/)")
        data["report_dir"] = str(report_dir)
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
                graph,
                spec,
                out / safe,
                tune=args.tune,
                recipe=recipe,
                progress=False,
                weights_codec=args.weights_codec,
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

    feeds = input_feeds(args.input)
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


def cmd_generate(args: argparse.Namespace, con: Console) -> Done:
    from ecograph.lm import load_lm

    con.progress(f"loading {args.lm_dir}")
    lm = load_lm(args.lm_dir, device=args.device)
    text_in = lm.spec.has_tokenizer and not args.token_ids
    if text_in:
        ids = lm.encode(args.prompt)
    else:
        ids = _token_ids(args.prompt, lm)
    result = lm.generate(
        ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        declared_power_watts=args.declared_watts,
    )
    tokens = result.tokens[0]
    data: dict[str, Any] = {
        "lm": args.lm_dir,
        "prompt_tokens": [int(t) for t in ids.reshape(-1)],
        "new_tokens": [int(t) for t in result.new_tokens[0]],
        "stats": result.stats.to_dict(),
    }
    if lm.spec.has_tokenizer:
        data["text"] = lm.decode_text(tokens)
        con.say(data["text"])
    else:
        con.say(" ".join(str(int(t)) for t in tokens))
    con.say(result.stats.summary())
    return Done(data)


def _token_ids(prompt: str, lm: Any) -> Any:
    import numpy as np

    try:
        ids = [int(t) for t in prompt.replace(",", " ").split()]
    except ValueError:
        if lm.spec.has_tokenizer:  # --token-ids was given
            raise UsageError(
                f"--token-ids reads --prompt as token ids like '1 2 3', not {prompt[:40]!r}; "
                "drop --token-ids to give text"
            ) from None
        raise UsageError(
            f"{lm.path} has no tokenizer, so --prompt must be token ids like '1 2 3', not "
            f"{prompt[:40]!r}; compile the LM with a tokenizer (compile_lm(..., tokenizer=...) "
            "or from a model folder that holds one) to give text"
        ) from None
    if not ids:
        raise UsageError("--prompt holds no token ids; give at least one, like '1 2 3'")
    return np.array([ids], np.int64)


def cmd_bench(args: argparse.Namespace, con: Console) -> Done:
    from ecograph.backends.tvm import load
    from ecograph.report.measure import measure_energy, measure_latency

    feeds = input_feeds(args.input)
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


def _compile_for_profile(
    args: argparse.Namespace, con: Console, out: Path
) -> tuple[Path, dict[str, int]]:
    """Compile MODEL for --target (through the compile cache) into `out`; the artifact and the
    symbolic dims of the model's example inputs."""
    from ecograph.api import compile_cached

    spec = spec_that_runs_here(
        args.target or "x86"
    )  # before the compile: say now it cannot run here
    model, inputs = load_model(args.model, con)
    graph = to_graph(model, inputs)
    check_binds(dict(args.bind), [(v.name, list(v.shape)) for v in graph.inputs])
    dims = example_dims(graph, inputs)
    recipe = _run_pipeline(graph, args.pipeline, args.quantize)
    print(f"compiling {args.model} for {spec.describe()} ...", file=sys.stderr)
    return compile_cached(graph, spec, out, False, recipe, True), dims


def cmd_profile(args: argparse.Namespace, con: Console) -> Done:
    from ecograph.backends.tvm import load
    from ecograph.report.profile import profile_model, random_inputs

    binds = dict(args.bind)
    with tempfile.TemporaryDirectory(prefix="ecograph-profile-") as tmp:
        if is_artifact(args.model):
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
        check_binds(binds, [(s["name"], s["shape"]) for s in specs])
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
