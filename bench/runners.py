"""The workloads and the runners: how each peer captures, compiles and calls one model.

Runs inside a worker process (bench/worker.py); `prepare` is the worker's setup. Each worker
builds its workload from the same seed, so every runner sees the same weights and inputs, and
compares its first output with torch eager fp32 on those inputs (the cosine column).

Workloads: minilm-b1 and minilm-b8 (real MiniLM-L6 weights, seq 128), llama-prefill (128
tokens) and llama-decode (one token after a 128-token prompt, with a KV cache), resnet (the
ResNet-style CNN of the tests, 1x3x64x64); by name only, llama-wide-decode / -prefill and
resnet18 and resnet50 (ResNet-18's and ResNet-50's layouts, 1x3x224x224), mobilenetv2
(MobileNetV2's, 1x3x224x224) and hf-mobilenetv2 (Hugging Face's MobileNetV2Model at 224,
width 1.0, random weights: TensorFlow "same" padding as a Pad before every conv).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.load import available_cores
from bench.worker import Prepared

RUNNERS = [
    "torch-eager",
    "torch-int8",
    "torch-compile",
    "ort-fp32",
    "ort-int8",
    "tvm-export",
    "ecograph",
    "ecograph-int8",
    "ecograph-tuned",
    "ecograph-auto",
    "ecograph-int8w",
    "ecograph-int4",
    "ecograph-int4-a8",
    "ecograph-palette4",
    "ort-int4",
    "ort-int4-acc4",
    "ort-ecograph",
    "ecograph-nbits",
    "ecograph-nbits-a8",
    "ecograph-int8s",
    "ort-int8s",
    "ecograph-int8q",
    "ort-int8q",
]
# ecograph-tuned takes minutes of MetaSchedule tuning; ecograph-auto adapts its thread count
# (it is for --busy runs). Both run only when named, as do the weight-only rows (LLM decode
# tables): ecograph-int8w / ecograph-int4 / ecograph-palette4 (optimize's "int8-weight" /
# "int4" / "palette4" presets: int8 per channel, int4 in groups of 128, 16 k-means centroids
# per group of 16 output channels; ecograph-int4-a8: "int4-a8", int4 weights times int8
# activations in blocks of 128) and ONNX Runtime's MatMulNBits (4-bit, blocks of 128,
# symmetric; ort-int4 computes in float32, accuracy_level 0; ort-int4-acc4 quantizes the
# activations to int8, accuracy_level 4, its fastest CPU path). ecograph-nbits /
# ecograph-nbits-a8: ort-int4-acc4's model (MatMulNBits) imported into ecograph and compiled,
# as it is (MatMulNBits in float32) or after the nbits-activation-blocks pass (int8
# activation blocks: the int4-a8 kernel). ecograph-int8s / ort-int8s: static int8
# (ecograph's "int8-static"; ONNX Runtime's quantize_static, QDQ, per-channel int8 weights,
# uint8 activations), both calibrated on the same CALIBRATION_BATCHES inputs (`calibration`).
# ort-int8q: ort-int8s's quantization written in QOperator format (QLinearConv, QLinearAdd,
# QLinearGlobalAveragePool, QGemm: how the ONNX Model Zoo's int8 models are); ecograph-int8q:
# that model imported into ecograph and compiled as it is (no quantization of its own).
OPT_IN_RUNNERS = ("ecograph-tuned", "ecograph-auto", "ecograph-int8w", "ecograph-int4",
                  "ecograph-int4-a8", "ecograph-palette4", "ort-int4", "ort-int4-acc4",
                  "ecograph-nbits", "ecograph-nbits-a8", "ecograph-int8s",
                  "ort-int8s", "ecograph-int8q", "ort-int8q")  # fmt: skip
CALIBRATION_BATCHES = 8
DEFAULT_RUNNERS = [r for r in RUNNERS if r not in OPT_IN_RUNNERS]
WORKLOADS = ["minilm-b1", "minilm-b8", "llama-prefill", "llama-decode", "resnet"]
# Run only when named: one decode step (or a 128-token prefill) of a Llama with TinyLlama-1.1B's
# layer shapes (hidden 2048, FFN 5632, 32 query / 4 KV heads), 2 layers, vocab 8000: ~120M
# parameters, 480 MB in float32, so a step reads its weights from memory, not from cache.
# And ResNet-18's and ResNet-50's layouts at 1x3x224x224 (1.8 and 4.1 GMACs; the default
# `resnet` is a toy one of 0.1 ms, where launch costs weigh as much as the convolutions).
EXTRA_WORKLOADS = ["llama-wide-decode", "llama-wide-prefill", "resnet18", "resnet50", "mobilenetv2",
                   "hf-mobilenetv2"]  # fmt: skip
BASELINE = "ort-fp32"
TUNE_TRIALS = int(os.environ.get("ECOGRAPH_BENCH_TRIALS", "64"))


def runner_env(runner: str) -> dict[str, str]:
    """Environment a runner's worker needs beyond the fixed thread count."""
    if runner == "ecograph-auto":
        return {"ECOGRAPH_NUM_THREADS": "auto"}
    return {}


# --------------------------------------------------------------------- workloads


def build_workload(name: str) -> tuple[Any, tuple[Any, ...]]:
    """(torch module in eval mode, example args) for a workload, from seed 0."""
    import torch

    torch.manual_seed(0)
    if name.startswith("minilm"):
        from tests.quant.minilm_eval import encoder_module

        batch = 8 if name.endswith("b8") else 1
        model = encoder_module()
        ids = torch.randint(1000, 20000, (batch, 128))
        mask = torch.ones(batch, 128, dtype=torch.int64)
        mask[:, 100:] = 0
        return model, (ids, mask)
    if name == "llama-wide-decode":
        return decode_workload(build_llama(wide=True))
    if name == "llama-wide-prefill":
        return prefill_module(build_llama(wide=True)), (torch.randint(0, 1000, (1, 128)),)
    if name.startswith("llama"):
        model = build_llama()
        if name == "llama-prefill":
            return prefill_module(model), (torch.randint(0, 1000, (1, 128)),)
        return decode_workload(model)
    if name == "resnet":
        from tests.models.cnn import TinyResNet

        return TinyResNet().eval(), (torch.randn(1, 3, 64, 64),)
    if name == "resnet18":
        from tests.models.cnn import ResNet18

        return ResNet18().eval(), (torch.randn(1, 3, 224, 224),)
    if name == "resnet50":
        from tests.models.cnn import ResNet50

        return ResNet50().eval(), (torch.randn(1, 3, 224, 224),)
    if name == "mobilenetv2":
        from tests.models.cnn import MobileNetV2

        return MobileNetV2().eval(), (torch.randn(1, 3, 224, 224),)
    if name == "hf-mobilenetv2":
        return build_hf_mobilenet(), (torch.randn(1, 3, 224, 224),)
    known = ", ".join(WORKLOADS + EXTRA_WORKLOADS)
    raise ValueError(f"unknown workload {name!r}; known: {known}")


def build_hf_mobilenet() -> Any:
    """Hugging Face's MobileNetV2Model (224 x 224, width 1.0; its pooled output), conv
    weights of variance 1 / fan-in (tests/models/transformers_models.py)."""
    import torch

    from tests.models.transformers_models import make_hf_mobilenet_v2

    class Pooled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x).pooler_output

    return Pooled(make_hf_mobilenet_v2()).eval()


def build_llama(*, wide: bool = False) -> Any:
    """The bench's Llama (4 layers, hidden 256, GQA 8/2, vocab 2000), or with `wide` one of
    TinyLlama-1.1B's layer shapes (2 layers, hidden 2048, FFN 5632, GQA 32/4, vocab 8000)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        num_hidden_layers=2 if wide else 4,
        hidden_size=2048 if wide else 256,
        intermediate_size=5632 if wide else 688,
        num_attention_heads=32 if wide else 8,
        num_key_value_heads=4 if wide else 2,
        vocab_size=8000 if wide else 2000,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        use_cache=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).eval()


def prefill_module(inner: Any) -> Any:
    """The prompt pass: token ids in, logits out."""
    import torch

    class Prefill(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any) -> Any:
            return self.inner(input_ids=input_ids).logits

    return Prefill().eval()


def decode_step_module(model: Any) -> Any:
    """One decode step of a Hugging Face causal LM over an explicit KV cache: (token [1, 1],
    keys and values [layers, 1, kv_heads, S, head_dim]) -> logits [1, 1, vocab], for any
    cache length S (GPT-2's config answers num_hidden_layers too)."""
    import torch

    layers = model.config.num_hidden_layers

    class Decode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: Any, past_keys: Any, past_values: Any) -> Any:
            from transformers import DynamicCache

            cache = DynamicCache()
            for i in range(layers):
                cache.update(past_keys[i], past_values[i], i)
            pos = torch.full((1, 1), past_keys.shape[3], dtype=torch.long, device=input_ids.device)
            out = self.inner(
                input_ids=input_ids, past_key_values=cache, position_ids=pos, use_cache=True
            )
            return out.logits

    return Decode().eval()


def decode_workload(model: Any) -> tuple[Any, tuple[Any, ...]]:
    """One decode step: the new token attends to an explicit 128-position KV cache."""
    import torch

    cfg = model.config
    layers = cfg.num_hidden_layers
    kv_heads = cfg.num_key_value_heads
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    keys = torch.randn(layers, 1, kv_heads, 128, head_dim)
    values = torch.randn(layers, 1, kv_heads, 128, head_dim)
    return decode_step_module(model), (torch.randint(0, 1000, (1, 1)), keys, values)


# ----------------------------------------------------------------------- runners


def _state_bytes(module: Any) -> int:
    total = 0
    for t in list(module.state_dict().values()):
        if hasattr(t, "element_size"):
            total += t.numel() * t.element_size()
        elif isinstance(t, tuple):  # packed quantized params
            for x in t:
                if hasattr(x, "element_size"):
                    total += x.numel() * x.element_size()
    return total


def _export_onnx(model: Any, args: tuple[Any, ...], path: Path) -> Path:
    import torch

    torch.onnx.export(
        model,
        args,
        str(path),
        input_names=[f"in{i}" for i in range(len(args))],
        output_names=["out"],
        dynamo=True,
        external_data=False,
    )
    return path


def export_onnx(model: Any, args: tuple[Any, ...], path: Path) -> Path:
    """`model` on `args` exported to `path` the way the ONNX Runtime runners export it (torch's
    dynamo exporter, static shapes, weights inside the file); for other bench scripts."""
    return _export_onnx(model, args, path)


def _scratch() -> Path:
    """A temporary folder for this worker's exports and builds, removed when it exits."""
    tmp = Path(tempfile.mkdtemp(prefix="ecograph-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return tmp


def prepare(workload: str, runner: str, threads: int, options: dict[str, Any]) -> Prepared:
    """Build `workload`, capture/compile it with `runner` on `threads` threads, call it once.

    compile_seconds is what the runner pays before its first fast call: torch's first call
    (torch.compile compiles there), ONNX export + quantization + session creation, TVM's
    export + import + build, ecograph's optimize() (without the compile cache unless
    options["cache"])."""
    import torch

    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; known: {', '.join(RUNNERS)}")
    cores = len(available_cores())
    if runner == "ecograph-auto" and threads != cores:
        raise ValueError(
            f"ecograph-auto adapts up to all {cores} cores; it is comparable only with "
            f"--threads {cores}"
        )
    torch.set_num_threads(threads)
    model, args = build_workload(workload)
    with torch.no_grad():
        reference = model(*args).numpy()
    np_args = [a.numpy() for a in args]
    if runner.startswith("torch"):
        return _prepare_torch(runner, model, args, reference)
    if runner.startswith("ort"):
        return _prepare_ort(runner, model, args, np_args, threads, reference)
    if runner == "tvm-export":
        return _prepare_tvm_export(model, args, np_args, threads, reference)
    return _prepare_ecograph(runner, model, args, np_args, reference, options)


def _prepare_torch(runner: str, model: Any, args: tuple[Any, ...], reference: Any) -> Prepared:
    import torch

    t0 = time.perf_counter()
    m = model
    if runner == "torch-int8":
        m = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    if runner == "torch-compile":
        m = torch.compile(model)

    def call() -> Any:
        with torch.no_grad():
            return m(*args)

    first = call()
    compile_seconds = time.perf_counter() - t0
    nbytes = _state_bytes(m if runner != "torch-compile" else model)
    return Prepared(call, compile_seconds, nbytes, first.numpy(), reference)


def _prepare_ort(
    runner: str,
    model: Any,
    args: tuple[Any, ...],
    np_args: list[Any],
    threads: int,
    reference: Any,
) -> Prepared:
    import onnxruntime as ort

    tmp = _scratch()
    t0 = time.perf_counter()
    if runner == "ort-ecograph":
        path = _ecograph_onnx(model, args, tmp / "model.onnx")
    else:
        path = _export_onnx(model, args, tmp / "model.onnx")
    if runner == "ort-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        qpath = tmp / "model.int8.onnx"
        quantize_dynamic(str(path), str(qpath), weight_type=QuantType.QInt8)
        path = qpath
    elif runner.startswith("ort-int4"):
        path = _ort_int4(path, tmp / "model.int4.onnx", 4 if runner == "ort-int4-acc4" else 0)
    elif runner in ("ort-int8s", "ort-int8q"):
        path = _ort_int8_static(path, tmp / f"model.{runner}.onnx", args, runner == "ort-int8q")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    compile_seconds = time.perf_counter() - t0
    feeds = {i.name: a for i, a in zip(sess.get_inputs(), np_args, strict=True)}

    def call() -> Any:
        return sess.run(None, feeds)[0]

    return Prepared(call, compile_seconds, path.stat().st_size, call(), reference)


def calibration(args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """CALIBRATION_BATCHES inputs like `args` for the static int8 runners: float tensors
    redrawn from a normal distribution with their mean and spread (seeded), others as given."""
    import torch

    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(CALIBRATION_BATCHES):
        batches.append(tuple(
            torch.randn(a.shape, generator=gen) * a.std() + a.mean() if a.is_floating_point()
            else a
            for a in args
        ))  # fmt: skip
    return batches


def _ort_int8_static(path: Path, out: Path, args: tuple[Any, ...], qoperator: bool = False) -> Path:
    """The ONNX model at `path` quantized by ONNX Runtime's quantize_static: QDQ (QOperator
    with `qoperator`), int8 weights per channel, uint8 activations, min/max calibration on
    `calibration(args)`."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    names = [i.name for i in ort.InferenceSession(str(path)).get_inputs()]
    batches = [{n: a.numpy() for n, a in zip(names, b, strict=True)} for b in calibration(args)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.left, None)

    fmt = QuantFormat.QOperator if qoperator else QuantFormat.QDQ
    quantize_static(str(path), str(out), Reader(), quant_format=fmt,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)  # fmt: skip
    return out


def _ort_int4(path: Path, out: Path, accuracy_level: int) -> Path:
    """The ONNX model at `path` with its weight MatMuls as MatMulNBits (onnxruntime's
    quantizer: 4 bits, blocks of 128, symmetric), written to `out`."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(path)),
        bits=4,
        block_size=128,
        is_symmetric=True,
        accuracy_level=accuracy_level,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return out


def _ecograph_onnx(model: Any, args: tuple[Any, ...], path: Path) -> Path:
    """ecograph's capture and default pass pipeline (the graph its x86 builds compile),
    exported to ONNX: ONNX Runtime's kernels on ecograph's graph, to tell the graph's share
    of a gap from the kernels' share."""
    import ecograph
    from ecograph.passes import run_passes

    graph = ecograph.from_torch(model, args)
    run_passes(graph, "default", progress=False)
    ecograph.to_onnx(graph, path, external_data=False)
    return path


def _prepare_tvm_export(
    model: Any, args: tuple[Any, ...], np_args: list[Any], threads: int, reference: Any
) -> Prepared:
    """TVM's own torch.export importer, default (untuned) build; TVM_NUM_THREADS is set."""
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    t0 = time.perf_counter()
    ep = torch.export.export(model, args)
    mod = from_exported_program(ep, keep_params_as_input=False, unwrap_unit_return_tuple=True)
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "num-cores": threads}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    compile_seconds = time.perf_counter() - t0
    tv_args = [tvm.runtime.tensor(a) for a in np_args]

    def call() -> Any:
        return vm["main"](*tv_args).numpy()

    return Prepared(call, compile_seconds, _state_bytes(model), call(), reference)


def _prepare_ecograph(
    runner: str,
    model: Any,
    args: tuple[Any, ...],
    np_args: list[Any],
    reference: Any,
    options: dict[str, Any],
) -> Prepared:
    """ecograph.optimize() for x86; the thread count comes from ECOGRAPH_NUM_THREADS."""
    import ecograph

    source: Any = model
    pipeline = "default"
    if runner in ("ecograph-nbits", "ecograph-nbits-a8"):
        # ONNX Runtime's int4 model (ort-int4-acc4's), imported: the same weights as ORT's
        tmp = _scratch()
        source = _ort_int4(_export_onnx(model, args, tmp / "model.onnx"), tmp / "int4.onnx", 4)
        args = ()
        if runner == "ecograph-nbits-a8":
            pipeline = "default,nbits-activation-blocks"
    elif runner == "ecograph-int8q":
        # ONNX Runtime's QOperator int8 model (ort-int8q's), imported: ORT's own quantization
        tmp = _scratch()
        source = _ort_int8_static(_export_onnx(model, args, tmp / "model.onnx"),
                                  tmp / "int8q.onnx", args, qoperator=True)  # fmt: skip
        args = ()

    quant = {"ecograph-int8": "int8", "ecograph-int8w": "int8-weight", "ecograph-int4": "int4",
             "ecograph-int4-a8": "int4-a8", "ecograph-palette4": "palette4",
             "ecograph-int8s": "int8-static"}.get(runner)  # fmt: skip
    tune = TUNE_TRIALS if runner == "ecograph-tuned" else False
    t0 = time.perf_counter()
    res = ecograph.optimize(
        source,
        args or None,
        target="x86",
        pipeline=pipeline,
        quantize=quant,
        tune=tune,
        # random-weight logits: int4 keeps cosine ~0.96 (the cosine column says how much)
        accuracy_budget=(0.9 if quant in ("int4", "int4-a8", "palette4") else 0.98)
        if quant
        # int8 activation blocks: cosine ~0.9999 to the float MatMulNBits model
        else (0.999 if runner == "ecograph-nbits-a8" else None),
        calibration_data=calibration(args) if quant == "int8-static" else None,
        measure=False,
        out_dir=_scratch(),
        cache=bool(options.get("cache", False)),
    )
    compile_seconds = time.perf_counter() - t0
    feeds = dict(zip([v.name for v in res.graph.inputs], np_args, strict=True))

    def call() -> Any:
        return res.module(**feeds)

    first = call()
    got = first[0] if isinstance(first, tuple | list) else first
    extras: dict[str, Any] = {}
    if options.get("profile", True):
        extras.update(_unscheduled_share(res.module, feeds))
    return Prepared(call, compile_seconds, res.report.optimized.bytes, got, reference, extras)


def _unscheduled_share(module: Any, feeds: dict[str, Any]) -> dict[str, Any]:
    """Share of kernel time in kernels no schedule rule scheduled (ecograph's profiler)."""
    try:
        from ecograph.report.profile import profile_model

        prof = profile_model(module, feeds, repeat=5, warmup=1)
    except Exception as exc:  # optional column: a profiler failure must not cost the row
        return {"profile_error": f"{type(exc).__name__}: {exc}"[:200]}
    return {"unscheduled_share": prof.unscheduled_share, "runtime_share": prof.runtime_share}
