"""int4 weights times int8 activations (`activation_block`, the "int4-a8" preset): what the
reference interpreter computes, the quantize pass and ONNX export that produce and carry it,
and the TVM kernels (x86's 8-bit-integer kernel, and the quantize-dequantize of A every other
target runs) against the interpreter."""

from __future__ import annotations

import platform
import re

import ml_dtypes
import numpy as np
import pytest

from ecograph.errors import PassError
from ecograph.ir import Graph, GraphBuilder, interpret
from ecograph.quant.presets import quantize_pass
from ecograph.quant.quantize import Quantize

ON_X86 = platform.machine() in ("x86_64", "AMD64")
rng = np.random.default_rng(11)


def _a_prime(a: np.ndarray, block: int) -> np.ndarray:
    """The test's own statement of A' (ir/ops/weight_only.py's module doc), one block at a
    time in float64 then float32, for comparison with the interpreter."""
    out = np.zeros(a.shape, np.float32)
    for idx in np.ndindex(*a.shape[:-1]):
        row = a[idx]
        for start in range(0, row.shape[0], block):
            part = row[start : start + block].astype(np.float32)
            scale = np.float32(max(float(np.abs(part).max()), 1e-30)) / np.float32(127)
            codes = np.clip(np.round(part / scale), -127, 127)  # np.round: half to even
            out[idx][start : start + block] = codes * scale
    return out


def _graph(
    k: int,
    n: int,
    *,
    block: int = 32,
    a_block: int | None = None,
    wdt: str = "int4",
    zero_point: bool = False,
    trans_b: bool = False,
    rows: list[int | str] | None = None,
) -> Graph:
    """Y = A @ DequantizeLinear(W_q, s[, zp]; blocks of `block` along K), A quantized in blocks
    of `a_block` (default: `block`), as one DequantizeMatMul."""
    lo, hi = (-8, 7) if wdt == "int4" else (0, 15)
    np_dt = ml_dtypes.int4 if wdt == "int4" else ml_dtypes.uint4
    shape = (n, k) if trans_b else (k, n)
    groups = (n, -(-k // block)) if trans_b else (-(-k // block), n)
    b = GraphBuilder("a8")
    x = b.input("x", "float32", [*(rows or ["m"]), k])
    ins = [
        x,
        b.constant(rng.integers(lo, hi + 1, shape).astype(np_dt), "w_q"),
        b.constant(rng.uniform(0.01, 0.05, groups).astype(np.float32), "s"),
    ]
    if zero_point:
        ins.append(b.constant(rng.integers(lo, hi + 1, groups).astype(np_dt), "zp"))
    attrs = {
        "axis": 1 if trans_b else 0,
        "block_size": block,
        "trans_b": int(trans_b),
        "activation_block": block if a_block is None else a_block,
    }
    b.output(b.op("DequantizeMatMul", *ins, domain="ecograph", **attrs))
    return b.graph


def _reference(graph: Graph, a: np.ndarray) -> np.ndarray:
    """A' @ W' in float64 from the graph's constants, written out here."""
    node = graph.nodes[0]
    w = node.input(1).const_value.astype(np.float64)  # type: ignore[union-attr]
    s = node.input(2).const_value.astype(np.float64)  # type: ignore[union-attr]
    z = node.input(3)
    if node.attr("trans_b"):
        w, s = w.T, s.T
    block = int(node.attr("block_size"))
    zero = 0.0
    if z is not None:
        zero = z.const_value.astype(np.float64)  # type: ignore[union-attr]
        zero = np.repeat(zero.T if node.attr("trans_b") else zero, block, axis=0)[: w.shape[0]]
    wf = (w - zero) * np.repeat(s, block, axis=0)[: w.shape[0]]
    return _a_prime(a, int(node.attr("activation_block"))).astype(np.float64) @ wf


# ------------------------------------------------------------------ the reference semantics


def test_activation_blocks_round_half_to_even_and_keep_zero_blocks():
    from ecograph.ir.ops.weight_only import quantize_activation_blocks

    a = np.array([[1.0, -2.0, 0.5, 4.0, 0.0, 0.0]], np.float32)
    got = quantize_activation_blocks(a, 2)
    s1, s2 = np.float32(2) / np.float32(127), np.float32(4) / np.float32(127)
    # 1 / (2 / 127) = 63.5 rounds to 64 (even); 0.5 / (4 / 127) = 15.875 to 16; zeros stay 0
    want = np.array([[64 * s1, -127 * s1, 16 * s2, 127 * s2, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("zero_point,trans_b", [(False, False), (True, False), (True, True)])
def test_interpreter_quantizes_a_before_the_product(zero_point, trans_b):
    g = _graph(80, 24, block=16, zero_point=zero_point, trans_b=trans_b, wdt="uint4")
    a = rng.standard_normal((3, 80)).astype(np.float32)
    got = interpret(g, {"x": a})[g.outputs[0].name]
    want = _reference(g, a)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_negative_activation_block_is_a_type_error():
    from ecograph.errors import EcographError

    with pytest.raises(EcographError, match="activation_block=-1 must be >= 0"):
        _graph(32, 8, a_block=-1)


# ------------------------------------------------------------------ the quantize pass


def _mlp(k: int = 256, n: int = 96) -> Graph:
    b = GraphBuilder("mlp")
    x = b.input("x", "float32", ["m", k])
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    b.output(b.op("MatMul", x, b.constant(w, "w")))
    return b.graph


def test_int4_a8_preset_makes_dequantize_matmul_with_activation_blocks():
    g = _mlp()
    float_graph = g.copy()
    quantize_pass("int4-a8").run(g)
    (node,) = g.nodes
    assert node.qualified_op == "ecograph::DequantizeMatMul"
    assert (node.attr("block_size"), node.attr("activation_block")) == (128, 128)
    a = rng.standard_normal((4, 256)).astype(np.float32)
    got = interpret(g, {"x": a})[g.outputs[0].name]
    want = interpret(float_graph, {"x": a})[float_graph.outputs[0].name]
    cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert 0.98 < cos < 1.0  # int4 weights and int8 activations: close, not exact


def test_block_activations_leave_a_conv_float_with_a_note():
    b = GraphBuilder("conv")
    x = b.input("x", "float32", [1, 32, 4, 4])
    w = (rng.standard_normal((8, 32, 1, 1)) * 0.1).astype(np.float32)
    b.output(b.op("Conv", x, b.constant(w, "w")))
    g = b.graph
    result = Quantize(
        mode="weight_only", dtype="int4", granularity="group:32", activations="block"
    ).run(g)
    assert any("activations stay float" in note for note in result.notes), result.notes
    assert "DequantizeMatMul" not in {n.op_type for n in g.nodes}


@pytest.mark.parametrize(
    "options,message",
    [
        ({"dtype": "int8", "granularity": "group:32"}, "needs mode='weight_only' with dtype int4"),
        ({"dtype": "int4", "granularity": "channel"}, "needs granularity='group:N'"),
    ],
)
def test_block_activations_bad_options_are_pass_errors(options, message):
    with pytest.raises(PassError, match=message):
        Quantize(mode="weight_only", activations="block", **options)


# ------------------------------------------------------------------ ONNX export


@pytest.mark.parametrize("k", [64, 80])  # 80: a short last block (padded, then sliced off)
def test_onnx_export_writes_the_activation_quantization_in_standard_ops(k):
    ort = pytest.importorskip("onnxruntime")
    from ecograph.frontend.onnx_export import to_onnx

    g = _graph(k, 40, block=32, zero_point=True, wdt="uint4", rows=[2, 3])
    model = to_onnx(g)
    assert {n.domain for n in model.graph.node} == {""}
    assert {"Round", "ReduceMax", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    a = rng.standard_normal((2, 3, k)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": a})[0]
    want = _reference(g, a.reshape(6, k)).reshape(2, 3, 40)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_onnx_export_of_activation_blocks_over_a_symbolic_k_is_an_error():
    from ecograph.errors import UnsupportedError
    from ecograph.frontend.onnx_export import to_onnx

    b = GraphBuilder("sym")
    x = b.input("x", "float32", ["m", "k"])
    w = b.constant(rng.integers(-8, 8, (64, 8)).astype(ml_dtypes.int4), "w_q")
    s = b.constant(np.full((2, 8), 0.1, np.float32), "s")
    b.output(
        b.op("DequantizeMatMul", x, w, s, domain="ecograph", axis=0, block_size=32,
             activation_block=32)
    )  # fmt: skip
    with pytest.raises(UnsupportedError, match="exports only with A's last dimension static"):
        to_onnx(b.graph)


# ------------------------------------------------------------------ TVM


def _build_and_run(graph: Graph, a: np.ndarray, target: str) -> tuple[np.ndarray, dict]:
    import tvm
    from tvm import relax

    from ecograph.backends.tvm import build

    result = build.build_module(graph, target, keep_params=False)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(a)).numpy(), dict(result.kernels)


def _needs_host(target: str) -> None:
    pytest.importorskip("tvm")
    if not ON_X86:
        pytest.skip("x86 code runs only on an x86 host")
    from ecograph.backends.tvm import targets

    missing = targets.missing_on_host(targets.resolve(target))
    if missing:
        pytest.skip(f"this host cannot run {target} code (lacks {', '.join(missing)})")


A8_CASES = [
    # (K, N, block, weight dtype, zero point, trans_b, A's shape)
    (256, 96, 128, "int4", False, False, [1, 256]),
    (256, 200, 64, "int4", False, False, [3, 256]),  # N not a whole number of 32-column panels
    (128, 64, 32, "uint4", True, False, [2, 5, 128]),  # rank 3, zero points per group
    (96, 40, 32, "uint4", False, True, [7, 96]),  # weights stored [N, K]
    (160, 72, 64, "int4", False, False, [3, 160]),  # K not whole blocks: padded to 192
    (96, 40, 64, "uint4", True, True, [1, 96]),  # the same, one row, zero points, [N, K]
]


# x86 targets and the instructions of their product kernel (`int4_a8.isa`): AVX2's
# vpmaddubsw; AVX-512 VNNI's vpdpbusd on zmm (Zen 4, Cascade Lake); AVX-VNNI's on ymm
X86_KERNELS = [
    ("x86:haswell", "avx2", r"^\s*vpmaddubsw\s+%ymm", r"vpdpbusd|%zmm"),
    ("x86:skylake-avx512", "avx2", r"^\s*vpmaddubsw\s+%ymm", r"vpdpbusd"),  # no VNNI
    ("x86:znver4", "avx512vnni", r"^\s*vpdpbusd\s+%zmm", r"vpmaddubsw"),
    ("x86:cascadelake", "avx512vnni", r"^\s*vpdpbusd\s+%zmm", r"vpmaddubsw"),
    ("x86:alderlake", "avxvnni", r"^\s*\{vex\}\s+vpdpbusd\s+%ymm", r"vpmaddubsw|%zmm"),
]


@pytest.mark.parametrize("target", ["x86:haswell", "x86:znver4", "x86:alderlake"])
@pytest.mark.parametrize("k,n,block,wdt,zp,trans_b,a_shape", A8_CASES)
def test_x86_integer_kernel_matches_the_interpreter(target, k, n, block, wdt, zp, trans_b, a_shape):
    _needs_host(target)  # the kernel's instructions: AVX2, AVX-512 VNNI, AVX-VNNI
    rows = ["m", *a_shape[1:-1]]
    g = _graph(k, n, block=block, wdt=wdt, zero_point=zp, trans_b=trans_b, rows=rows)
    a = rng.standard_normal(a_shape).astype(np.float32)
    got, kernels = _build_and_run(g, a, target)
    assert "int4-a8" in kernels.values(), kernels
    assert kernels["quantize_activation_blocks"] == "int4-a8-prologue", kernels  # hand-scheduled
    want = interpret(g, {"x": a})[g.outputs[0].name]
    # The same 8-bit codes: the integer sums are exact, the float rescale rounds differently
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_two_layers_get_two_product_kernels():
    """Each product of a module gets its own kernel (two shapes, two names)."""
    _needs_host("x86:haswell")
    b = GraphBuilder("two")
    x = b.input("x", "float32", ["m", 256])
    h = b.op("MatMul", x, b.constant((rng.standard_normal((256, 64)) * 0.05).astype("f4"), "w1"))
    b.output(
        b.op("MatMul", h, b.constant((rng.standard_normal((64, 32)) * 0.1).astype("f4"), "w2"))
    )
    g = b.graph
    Quantize(mode="weight_only", dtype="int4", granularity="group:32", activations="block").run(g)
    a = rng.standard_normal((2, 256)).astype(np.float32)
    got, kernels = _build_and_run(g, a, "x86:haswell")
    assert list(kernels.values()).count("int4-a8") == 2, kernels
    want = interpret(g, {"x": a})[g.outputs[0].name]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def _prologue_reference(a: np.ndarray, block: int) -> tuple[np.ndarray, ...]:
    """The prologue's outputs stated here: per row and block of `block` (K padded to whole
    blocks with zeros) the scale max(|a| max, 1e-30) / 127, the codes clip(round half to
    even(a / scale), -127, 127) as int8 (0 past K), and their sum."""
    m, k = a.shape
    k_pad = -(-k // block) * block
    padded = np.zeros((m, k_pad), np.float32)
    padded[:, :k] = a
    blocks = padded.reshape(m, -1, block)
    amax = np.abs(blocks).max(axis=-1)
    scales = np.maximum(amax, np.float32(1e-30)) / np.float32(127)
    codes = np.clip(np.round(blocks / scales[..., None]), -127, 127).astype(np.int8)
    return codes.reshape(m, k_pad), scales, codes.astype(np.int32).sum(axis=-1)


@pytest.mark.parametrize("target", ["x86", "x86:haswell", "x86:generic"])  # 16, 8, 4 lanes
@pytest.mark.parametrize("k,block", [(576, 32), (600, 32), (160, 64), (40, 32)])
def test_prologue_kernel_quantizes_each_block_exactly(target, k, block):
    """The activation prologue (`prologue_kernel`, hand-scheduled) against the test's own
    statement, bit for bit: 1 row (serial), 3 and 9 rows (in parallel from 8), K of whole
    blocks or not (a short last block: codes 0 past K), a zero block (scale 1e-30 / 127,
    codes 0), ties (a / scale = 62.5 and -64.5: half to even, not up or away), a code of 127."""
    _needs_host(target)
    import tvm

    from ecograph.backends.tvm import targets
    from ecograph.backends.tvm.ops.int4_a8 import prologue_kernel
    from ecograph.backends.tvm.schedules.matmul import lanes_for

    spec = targets.resolve(target)
    func = prologue_kernel(k, block, lanes_for(spec)).with_attr("global_symbol", "main")
    kernel = tvm.compile(tvm.IRModule({"main": func}), target=spec.tvm_target())["main"]
    for m in (1, 3, 9):
        a = (rng.standard_normal((m, k)) * 3).astype(np.float32)
        a[0, :block] = 0  # a zero block
        if m > 1:  # ties: 62.5 and -64.5 times the block's scale (max 127 -> scale 1)
            a[1, block : 2 * block] = 0
            a[1, block : block + 3] = [127.0, 62.5, -64.5]
        want = _prologue_reference(a, block)
        k_pad = want[0].shape[1]
        outs = [np.zeros((m, k_pad), np.int8), np.zeros(want[1].shape, np.float32),
                np.zeros(want[2].shape, np.int32)]  # fmt: skip
        args = [tvm.runtime.tensor(x) for x in (a, *outs)]
        kernel(*args)
        for got, expected in zip(args[1:], want, strict=True):
            np.testing.assert_array_equal(got.numpy(), expected)
        if m > 1:
            assert want[0][1, block + 1 : block + 3].tolist() == [62, -64]


@pytest.mark.parametrize(
    "target,prologue",
    [("x86:haswell", "quantize_activation_blocks"), ("x86:generic", "activation_blocks")],
)
def test_products_of_one_input_quantize_it_once(target, prologue):
    """Three products of x (q / k / v left unmerged) and one of another input: x is quantized once
    for the integer kernels (x86 with AVX2) and for the float ones (x86 without), the other
    input once more; every result as the interpreter's."""
    _needs_host(target)
    b = GraphBuilder("qkv")
    x = b.input("x", "float32", ["m", 128])
    ys = [
        b.op("MatMul", x, b.constant((rng.standard_normal((128, n)) * 0.05).astype("f4"), f"w{n}"))
        for n in (64, 32, 32)
    ]
    h = b.op("Relu", ys[0])
    ys.append(
        b.op("MatMul", h, b.constant((rng.standard_normal((64, 32)) * 0.1).astype("f4"), "wo"))
    )
    for y in ys:
        b.output(y)
    g = b.graph
    Quantize(mode="weight_only", dtype="int4", granularity="group:32", activations="block").run(g)
    assert sum(n.op_type == "DequantizeMatMul" for n in g.nodes) == 4
    import tvm
    from tvm import relax

    from ecograph.backends.tvm import build

    result = build.build_module(g, target, keep_params=False)
    # calls in the lowered main function (identical PrimFuncs share one name, so the
    # kernels' names cannot tell)
    main = result.lowered.mod["main"].script()
    calls = re.findall(rf"R\.call_tir\((?:cls\.)?{prologue}\d*,", main)
    assert len(calls) == 2, main  # x's, and the Relu's
    a = rng.standard_normal((3, 128)).astype(np.float32)
    got = relax.VirtualMachine(result.executable, tvm.cpu())["main"](tvm.runtime.tensor(a))
    want = interpret(g, {"x": a})
    for have, out in zip(got, g.outputs, strict=True):
        ref = want[out.name]
        np.testing.assert_allclose(have.numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize(
    "target,k,block,a_block",
    [
        ("x86:generic", 96, 32, 32),  # no AVX2: the float kernels after A's quantization
        ("x86:haswell", 96, 32, 16),  # activation blocks not the weight groups
        ("x86:haswell", 80, 16, 16),  # a block of 16: under the kernel's 32
    ],
)
def test_other_cases_quantize_a_then_run_the_float_kernel(target, k, block, a_block):
    _needs_host(target)
    g = _graph(k, 24, block=block, a_block=a_block)
    a = rng.standard_normal((3, k)).astype(np.float32)
    got, kernels = _build_and_run(g, a, target)
    assert "int4-a8" not in kernels.values(), kernels
    assert any("activation_blocks" in name for name in kernels), kernels
    want = interpret(g, {"x": a})[g.outputs[0].name]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("target,kind,instruction,absent", X86_KERNELS)
@pytest.mark.parametrize("rows", [1, 3])
def test_each_x86_target_multiplies_with_its_instruction(target, kind, instruction, absent, rows):
    """Compiled only (any host): the product kernel's assembly holds the instruction of the
    target's kind and none of the others."""
    pytest.importorskip("tvm")
    from ecograph.backends.tvm import build, targets
    from ecograph.backends.tvm.ops import int4_a8
    from tests.backends.tvm_helpers import assembly, count_lines

    spec = targets.resolve(target)
    assert int4_a8.isa(spec) == kind
    g = _graph(128, 64, block=32, rows=[rows])
    result = build.build_module(g, spec, keep_params=False, progress=False)
    assert "int4-a8" in dict(result.kernels).values(), result.kernels
    asm = assembly(result)
    assert count_lines(asm, instruction) > 0, f"no {instruction} in the {spec.describe()} build"
    assert count_lines(asm, absent) == 0, f"{absent} in the {spec.describe()} build"


def test_product_kernel_of_an_unknown_instruction_set_is_an_error():
    pytest.importorskip("tvm")
    from ecograph.backends.tvm.ops import int4_a8

    with pytest.raises(ValueError, match="unknown kind 'neon'"):
        int4_a8.product_kernel(int4_a8.A8Layout(64, 32, 32, 8), 1, "neon")


# ------------------------------------------------------------------ ARM

ARM_DOTPROD = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}


@pytest.mark.parametrize("target,kernel", [(ARM_DOTPROD, True), ("arm", False)])
def test_arm_takes_the_sdot_kernel_with_dotprod_only(target, kernel):
    pytest.importorskip("tvm")
    from ecograph.backends.tvm import build

    g = _graph(128, 64, block=32)
    kernels = dict(build.build_module(g, target, keep_params=False).kernels)
    assert ("int4-a8" in kernels.values()) is kernel, kernels


@pytest.mark.emulator
def test_arm_sdot_kernel_matches_the_interpreter_on_the_emulated_device(tmp_path):
    pytest.importorskip("tvm")
    from ecograph.backends.tvm import rpc

    missing = rpc.emulator_ready()
    if missing is not None:
        pytest.skip(str(missing))
    import ecograph
    from ecograph import remote

    # signed codes with K not whole blocks (144 = 4.5 x 32), zero points per group (uint4),
    # N not a whole panel, 3 rows
    graphs = {
        "int4": _graph(144, 40, block=32),
        "uint4-zp": _graph(96, 72, block=32, wdt="uint4", zero_point=True, trans_b=True),
    }
    a = rng.standard_normal((3, 144)).astype(np.float32)
    failures = []
    with remote.EmulatedArmDevice() as device:
        for name, g in graphs.items():
            feeds = {"x": a[:, : g.inputs[0].type.shape[-1]].copy()}
            art = ecograph.compile(g, ARM_DOTPROD, tmp_path / name, progress=False)
            got = np.asarray(remote.connect(art, device.host, device.port)(**feeds))
            want = interpret(g, feeds)[g.outputs[0].name]
            if not np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max()):
                failures.append(f"{name}: max abs diff {np.abs(got - want).max():.3g}")
    assert not failures, "\n".join(failures)
