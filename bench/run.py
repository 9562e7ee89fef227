"""Benchmarks against peers: every runner on every workload, each in its own process.

    python bench/run.py                      # everything, appends to bench/RESULTS.md
    python bench/run.py --workloads resnet --runners torch-eager,ort-fp32,ecograph

Workloads: minilm-b1 and minilm-b8 (real MiniLM-L6 weights, seq 128), llama-prefill (128
tokens) and llama-decode (one token after a 128-token prompt, with a KV cache), resnet (the
ResNet-style CNN of the tests, 1x3x64x64).
Runners: torch-eager, torch-int8 (torch dynamic quantization), torch-compile, ort-fp32,
ort-int8 (onnxruntime.quantization dynamic), tvm-export (TVM's own torch.export importer,
untuned), ecograph (untuned), ecograph-tuned, ecograph-int8.

Each result: latency p50/p90, model bytes, energy per inference (measured or estimated, and
labelled), accuracy (cosine similarity to torch eager fp32 on the same input). The table
shows each as a ratio to ONNX Runtime fp32, and the machine is described.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUNNERS = [
    "torch-eager",
    "torch-int8",
    "torch-compile",
    "ort-fp32",
    "ort-int8",
    "tvm-export",
    "ecograph",
    "ecograph-tuned",
    "ecograph-int8",
]
WORKLOADS = ["minilm-b1", "minilm-b8", "llama-prefill", "llama-decode", "resnet"]
TUNE_TRIALS = int(os.environ.get("ECOGRAPH_BENCH_TRIALS", "64"))


# --------------------------------------------------------------------- workloads


def build_workload(name: str) -> tuple[Any, tuple[Any, ...], dict[str, Any] | None]:
    """(torch module, example args, dynamic info) for a workload."""
    import torch

    torch.manual_seed(0)
    if name.startswith("minilm"):
        from tests.quant.minilm_eval import encoder_module

        batch = 8 if name.endswith("b8") else 1
        model = encoder_module()
        ids = torch.randint(1000, 20000, (batch, 128))
        mask = torch.ones(batch, 128, dtype=torch.int64)
        mask[:, 100:] = 0
        return model, (ids, mask), None
    if name.startswith("llama"):
        model = _llama_bench_model()
        if name == "llama-prefill":
            return _Prefill(model), (torch.randint(0, 1000, (1, 128)),), None
        return _decode_workload(model)
    if name == "resnet":
        from tests.models.cnn import TinyResNet

        return TinyResNet().eval(), (torch.randn(1, 3, 64, 64),), None
    raise SystemExit(f"unknown workload {name}; known: {WORKLOADS}")


def _llama_bench_model() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        num_hidden_layers=4,
        hidden_size=256,
        intermediate_size=688,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=2000,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        use_cache=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).eval()


class _Prefill:
    def __new__(cls, inner: Any) -> Any:
        import torch

        class Prefill(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any) -> Any:
                return self.inner(input_ids=input_ids).logits

        return Prefill().eval()


def _decode_workload(model: Any) -> tuple[Any, tuple[Any, ...], None]:
    """One decode step: the new token attends to an explicit 128-position KV cache."""
    import torch

    cfg = model.config
    layers = cfg.num_hidden_layers
    kv_heads = cfg.num_key_value_heads
    head_dim = cfg.hidden_size // cfg.num_attention_heads

    class Decode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: Any, past_keys: Any, past_values: Any) -> Any:
            from transformers import DynamicCache

            cache = DynamicCache()
            for i in range(layers):
                cache.update(past_keys[i], past_values[i], i)
            pos = torch.full((1, 1), past_keys.shape[3], dtype=torch.long)
            out = self.inner(
                input_ids=input_ids, past_key_values=cache, position_ids=pos, use_cache=True
            )
            return out.logits

    keys = torch.randn(layers, 1, kv_heads, 128, head_dim)
    values = torch.randn(layers, 1, kv_heads, 128, head_dim)
    return Decode().eval(), (torch.randint(0, 1000, (1, 1)), keys, values), None


# ----------------------------------------------------------------------- runners


def _timed(fn: Any, warmup: int = 3, min_runs: int = 10, min_seconds: float = 2.0) -> Any:
    from ecograph.report.measure import measure_latency

    return measure_latency(fn, warmup=warmup, repeat=min_runs, min_seconds=min_seconds)


def _state_bytes(module: Any) -> int:
    total = 0
    for t in list(module.state_dict().values()):
        if hasattr(t, "element_size"):
            total += t.numel() * t.element_size()
        elif hasattr(t, "__iter__"):  # packed quantized params
            for x in t if isinstance(t, tuple) else []:
                if hasattr(x, "element_size"):
                    total += x.numel() * x.element_size()
    return total


def _export_onnx(model: Any, args: tuple[Any, ...], path: Path) -> Path:
    import torch

    names = [f"in{i}" for i in range(len(args))]
    torch.onnx.export(
        model,
        args,
        str(path),
        input_names=names,
        output_names=["out"],
        dynamo=True,
        external_data=False,
    )
    return path


def run_one(workload: str, runner: str) -> dict[str, Any]:
    """Run one (workload, runner) pair in this process and return its measurements."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model, args, _ = build_workload(workload)
    with torch.no_grad():
        reference = model(*args).numpy()
    np_args = [a.numpy() for a in args]
    energy_power = float(os.environ.get("ECOGRAPH_DECLARED_WATTS", "0") or 0) or None
    out: dict[str, Any] = {"workload": workload, "runner": runner}
    compile_seconds = 0.0
    tmp = Path(tempfile.mkdtemp(prefix="ecograph-bench-"))

    if runner in ("torch-eager", "torch-int8", "torch-compile"):
        m = model
        if runner == "torch-int8":
            m = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        if runner == "torch-compile":
            m = torch.compile(model)
        t0 = time.perf_counter()
        with torch.no_grad():
            m(*args)
        compile_seconds = time.perf_counter() - t0

        def call() -> Any:
            with torch.no_grad():
                return m(*args)

        got = call().numpy()
        nbytes = _state_bytes(m if runner != "torch-compile" else model)
    elif runner in ("ort-fp32", "ort-int8"):
        import onnxruntime as ort

        path = _export_onnx(model, args, tmp / "model.onnx")
        if runner == "ort-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            qpath = tmp / "model.int8.onnx"
            quantize_dynamic(str(path), str(qpath), weight_type=QuantType.QInt8)
            path = qpath
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {i.name: a for i, a in zip(sess.get_inputs(), np_args, strict=True)}

        def call() -> Any:
            return sess.run(None, feeds)[0]

        got = call()
        nbytes = path.stat().st_size
    elif runner == "tvm-export":
        import tvm
        from tvm import relax
        from tvm.relax.frontend.torch import from_exported_program

        t0 = time.perf_counter()
        ep = torch.export.export(model, args)
        mod = from_exported_program(ep, keep_params_as_input=False, unwrap_unit_return_tuple=True)
        ex = tvm.compile(
            mod, target=tvm.target.Target({"kind": "llvm", "num-cores": os.cpu_count()})
        )
        vm = relax.VirtualMachine(ex, tvm.cpu())
        compile_seconds = time.perf_counter() - t0
        tv_args = [tvm.runtime.tensor(a) for a in np_args]

        def call() -> Any:
            return vm["main"](*tv_args).numpy()

        got = call()
        nbytes = _state_bytes(model)
    elif runner.startswith("ecograph"):
        import ecograph

        quant = "int8" if runner == "ecograph-int8" else None
        tune = TUNE_TRIALS if runner == "ecograph-tuned" else False
        t0 = time.perf_counter()
        res = ecograph.optimize(
            model,
            args,
            target="x86",
            quantize=quant,
            tune=tune,
            accuracy_budget=0.98 if quant else None,
            measure=False,
            out_dir=tmp,
        )
        compile_seconds = time.perf_counter() - t0
        feeds = dict(zip([v.name for v in res.graph.inputs], np_args, strict=True))

        def call() -> Any:
            return res.module(**feeds)

        first = call()
        got = first[0] if isinstance(first, tuple) else first
        nbytes = res.report.optimized.bytes
    else:
        raise SystemExit(f"unknown runner {runner}; known: {RUNNERS}")

    from ecograph.report.measure import measure_energy

    lat = _timed(call)
    energy = measure_energy(call, device="cpu", latency=lat, declared_power_watts=energy_power)
    a = np.asarray(got, np.float64).reshape(-1)
    b = reference.astype(np.float64).reshape(-1)
    out.update(
        p50_ms=lat.p50_ms,
        p90_ms=lat.p90_ms,
        runs=lat.runs,
        bytes=int(nbytes),
        energy_j=energy.joules,
        energy_kind=energy.kind,
        energy_method=energy.method,
        cosine=float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
        max_abs_error=float(np.max(np.abs(a - b))),
        compile_seconds=compile_seconds,
    )
    return out


# ------------------------------------------------------------------------ driver


def _child(workload: str, runner: str, timeout: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out_path = f.name
    cmd = [sys.executable, __file__, "--child", workload, runner, "--child-out", out_path]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"workload": workload, "runner": runner, "error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"workload": workload, "runner": runner, "error": " | ".join(tail)[-300:]}
    data = json.loads(Path(out_path).read_text())
    data["wall_seconds"] = time.perf_counter() - t0
    return data


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for workload in dict.fromkeys(r["workload"] for r in results):
        rows = [r for r in results if r["workload"] == workload]
        base = next((r for r in rows if r["runner"] == "ort-fp32" and "error" not in r), None)
        lines.append(f"\n### {workload}\n")
        lines.append(
            "| runner | p50 ms | p90 ms | latency vs ORT fp32 | bytes vs ORT fp32 | "
            "energy/inference | energy vs ORT fp32 | cosine to torch fp32 |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['runner']} | failed: {r['error']} | | | | | | |")
                continue

            def ratio(key: str, r: dict[str, Any] = r, base: dict[str, Any] | None = base) -> str:
                if base is None or not base.get(key) or r.get(key) is None:
                    return "n/a"
                if key == "energy_j" and r.get("energy_kind") != base.get("energy_kind"):
                    return "n/a (kinds differ)"
                return f"{r[key] / base[key]:.2f}x"

            energy = (
                f"{r['energy_j'] * 1e3:.2f} mJ ({r['energy_kind']})"
                if r.get("energy_j") is not None
                else "unavailable"
            )
            lines.append(
                f"| {r['runner']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {ratio('p50_ms')} | "
                f"{ratio('bytes')} | {energy} | {ratio('energy_j')} | {r['cosine']:.5f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per runner")
    parser.add_argument("--no-append", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--json", default=None, help="also write all results to this file")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "RUNNER"), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_one(*args.child)
        Path(args.child_out).write_text(json.dumps(result))
        return 0

    from ecograph.report.measure import describe_machine

    machine = describe_machine()
    results = []
    for workload in args.workloads.split(","):
        for runner in args.runners.split(","):
            print(f"[bench] {workload} / {runner} ...", flush=True)
            r = _child(workload, runner, args.timeout)
            print(f"[bench]   {json.dumps(r)}", flush=True)
            results.append(r)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"## Benchmark run {when}\n\nCommand: `python bench/run.py --workloads {args.workloads} "
        f"--runners {args.runners}`\n\nMachine: {machine}\n\n"
        "Energy: measured where a counter exists, else estimated from p50 latency and "
        "ECOGRAPH_DECLARED_WATTS (if set), else unavailable; kinds are never compared.\n"
    )
    text = header + table(results) + "\n"
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    if not args.no_append:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
