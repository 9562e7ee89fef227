"""Weight-only int8/int4 through TVM: the dequantize runs inside the matmul kernel and the
artifact keeps the weights compressed (int4 packed two per byte)."""

from __future__ import annotations

import re
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from ecograph.ir import Graph, GraphBuilder, interpret
from ecograph.quant.quantize import Quantize

pytest.importorskip("tvm")

from ecograph.backends.tvm import build, rpc, runtime, targets
from ecograph.backends.tvm.driver import lower_graph, pack_int4

rng = np.random.default_rng(7)
X86 = targets.resolve({"kind": "llvm"})  # for lower_graph (a resolved target)

_RANGES = {"int4": (-8, 7), "uint4": (0, 15), "int8": (-128, 127), "uint8": (0, 255)}
_NP = {"int4": ml_dtypes.int4, "uint4": ml_dtypes.uint4, "int8": np.int8, "uint8": np.uint8}


def _dq_graph(
    wdt: str,
    axis: int | None,
    block: int,
    *,
    op: str = "MatMul",
    trans_b: bool = False,
    zero_point: bool = True,
    k: int = 64,
    n: int = 48,
    rows: int | str = "b",
) -> Graph:
    """x[rows, k] @ DequantizeLinear(W_q, scale[, zero point]) with constant quantized weights."""
    b = GraphBuilder()
    x = b.input("x", "float32", [rows, k])
    lo, hi = _RANGES[wdt]
    shape = (n, k) if trans_b else (k, n)
    q = rng.integers(lo, hi + 1, shape).astype(_NP[wdt])
    if block:
        assert axis is not None
        s_shape = list(shape)
        s_shape[axis] = -(-s_shape[axis] // block)
    else:
        s_shape = [] if axis is None else [shape[axis]]
    qparams = [b.constant(q, "w_q"), b.constant(rng.uniform(0.01, 0.1, s_shape).astype("f4"), "s")]
    if zero_point:
        qparams.append(b.constant(rng.integers(lo, hi + 1, s_shape).astype(_NP[wdt]), "zp"))
    attrs: dict[str, int] = {}
    if axis is not None:
        attrs["axis"] = axis
    if block:
        attrs["block_size"] = block
    w = b.op("DequantizeLinear", *qparams, **attrs)
    if op == "Gemm":
        y = b.op("Gemm", x, w, transB=int(trans_b))
    elif op == "Linear":
        y = b.op("Linear", x, w, b.constant(rng.standard_normal(n).astype("f4"), "bias"),
                 domain="ecograph")  # fmt: skip
    else:
        y = b.op("MatMul", x, w)
    b.output(y)
    return b.graph


def _run(graph: Graph, feeds: dict[str, np.ndarray], target: str = "x86") -> np.ndarray:
    import tvm
    from tvm import relax

    result = build.build_module(graph, target, keep_params=False)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in result.lowered.input_names]).numpy()


def _close(got: np.ndarray, want: np.ndarray) -> None:
    # A float32 dot product summed in another order: 1e-5 of the output's scale.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


CASES = [
    ("int4", 0, 32, "MatMul", False, True),
    ("int4", 1, 0, "MatMul", False, True),
    ("int4", None, 0, "MatMul", False, False),
    ("uint4", 0, 16, "MatMul", False, True),
    ("int8", 1, 0, "MatMul", False, False),
    ("uint8", 0, 32, "MatMul", False, True),
    ("int4", 1, 16, "Gemm", True, True),
    ("int8", 0, 0, "Gemm", True, True),
    ("int4", 0, 32, "Linear", False, False),
]


@pytest.mark.parametrize("wdt,axis,block,op,trans_b,zp", CASES)
def test_fused_dequantize_matmul_matches_the_interpreter(wdt, axis, block, op, trans_b, zp):
    g = _dq_graph(wdt, axis, block, op=op, trans_b=trans_b, zero_point=zp)
    text = lower_graph(g, X86).mod.script()
    # One kernel reads the integer weights; no float copy of W exists in the module.
    assert "dequantize_matmul" in text
    assert "R.matmul" not in text
    for batch in (1, 5):
        feeds = {"x": rng.standard_normal((batch, 64)).astype(np.float32)}
        want = interpret(g, feeds)[g.outputs[0].name]
        _close(_run(g, feeds), want)


def test_odd_column_count_packs_and_unpacks():
    g = _dq_graph("int4", 0, 16, n=47)
    feeds = {"x": rng.standard_normal((3, 64)).astype(np.float32)}
    _close(_run(g, feeds), interpret(g, feeds)[g.outputs[0].name])


def test_pack_int4_layout():
    q = np.array([[-8, 7, -1], [0, 1, 2]], dtype=ml_dtypes.int4)
    packed = pack_int4(q)
    assert packed.dtype == np.uint8 and packed.shape == (2, 2)
    # column 0 in the low nibble, column 1 in the high nibble, two's complement codes
    assert packed.tolist() == [[0x8 | (0x7 << 4), 0xF], [0x0 | (0x1 << 4), 0x2]]


def _unpack_panels(arr: np.ndarray, k: int, n: int) -> np.ndarray:
    """CPU layout [ceil(N / NR), ceil(K / 2), NR] uint8 -> the [K, N] 4-bit codes (0..15)."""
    pairs = arr.transpose(1, 0, 2).reshape(arr.shape[1], -1)[:, :n]
    codes = np.empty((2 * pairs.shape[0], n), np.uint8)
    codes[0::2], codes[1::2] = pairs & 0xF, pairs >> 4
    return codes[:k]


@pytest.mark.parametrize("n,trans_b", [(48, False), (47, False), (40, True)])
def test_int4_weights_stay_packed_in_cpu_panels(n, trans_b):
    """On CPUs the 4-bit codes are bound two per byte in the column panels the matmul kernel
    reads (ops/weight_panels.py): rows 2t and 2t + 1 share a byte, and nothing else is kept."""
    g = _dq_graph("int4", 1 if trans_b else 0, 16, k=63, n=n, op="Gemm", trans_b=trans_b)
    w = next(c for c in g.constants.values() if c.name == "w_q").const_value
    codes = (w.T if trans_b else w).astype(np.int16) & 0xF
    lowered = lower_graph(g, X86, keep_params=True)
    arr = lowered.params["w_q"]
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[1] == 32, arr.shape
    nr = arr.shape[2]
    assert arr.shape[0] == -(-n // nr) and arr.nbytes <= 32 * (n + nr - 1)
    np.testing.assert_array_equal(_unpack_panels(arr, 63, n), codes)


@pytest.mark.parametrize(
    "wdt,axis,block,zp",
    [
        ("int4", 0, 32, True),
        ("uint4", 0, 16, False),
        ("int8", 1, 0, True),
        ("int4", None, 0, False),
    ],
)
@pytest.mark.parametrize("rows", [1, "b"])
def test_cpu_weight_only_kernel_is_register_blocked(wdt, axis, block, zp, rows):
    """The fused kernel is scheduled by the matmul rule (register tile, vectorized over
    columns), not left to the fallback, for a decode row and for a symbolic batch."""
    g = _dq_graph(wdt, axis, block, zero_point=zp, rows=rows)
    # several rows decode the weights once per column panel (a DECODED_PANEL stage the rule
    # computes per panel); a decode row reads each weight once anyway, in the product
    text = lower_graph(g, X86).mod.script()
    assert ("decoded_panel" in text) == (rows != 1)
    result = build.build_module(g, "x86", keep_params=False)
    rules = {k: r for k, r in result.kernels.items() if "dequantize_matmul" in k}
    assert rules and set(rules.values()) == {"matmul"}, result.kernels
    for batch in (1,) if rows == 1 else (1, 7):
        feeds = {"x": rng.standard_normal((batch, 64)).astype(np.float32)}
        _close(_run(g, feeds), interpret(g, feeds)[g.outputs[0].name])


def test_a_dequantize_with_another_use_is_not_absorbed():
    """W is also a graph output: the float weights must exist, so the plain path is taken."""
    g = _dq_graph("int8", 1, 0)
    dq = next(n for n in g.nodes if n.op_type == "DequantizeLinear")
    g.set_outputs([*g.outputs, dq.outputs[0]])
    text = lower_graph(g, X86).mod.script()
    assert "dequantize_matmul" not in text and "R.matmul" in text
    feeds = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    ref = interpret(g, feeds)
    import tvm
    from tvm import relax

    result = build.build_module(g, "x86", keep_params=False)
    out = relax.VirtualMachine(result.executable, tvm.cpu())["main"](tvm.runtime.tensor(feeds["x"]))
    _close(out[0].numpy(), ref[g.outputs[0].name])
    np.testing.assert_array_equal(out[1].numpy(), ref[g.outputs[1].name])


def _mlp(width: int = 512) -> Graph:
    b = GraphBuilder()
    x = b.input("x", "float32", [1, width])
    h = b.op("MatMul", x, b.constant(rng.standard_normal((width, width)).astype("f4") * 0.05, "w1"))
    h = b.op("Relu", h)
    y = b.op("MatMul", h, b.constant(rng.standard_normal((width, width)).astype("f4") * 0.05, "w2"))
    b.output(y)
    return b.graph


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.parametrize(
    "dtype,granularity,limit", [("int8", "channel", 0.30), ("int4", "group:128", 0.18)]
)
def test_artifact_keeps_the_compression(tmp_path, dtype, granularity, limit):
    """TVM's FoldConstant used to fold DQ(constant) into float32 weights, giving back the fp32
    size. With the dequantize inside the matmul the artifact stays small and the VM calls one
    fused kernel per matmul."""
    import ecograph

    fp32 = ecograph.compile(_mlp(), "x86", tmp_path / "fp32", keep_params=False)
    g = _mlp()
    Quantize(mode="weight_only", dtype=dtype, granularity=granularity).run(g)
    quant = ecograph.compile(g, "x86", tmp_path / dtype, keep_params=False)
    ratio = _folder_bytes(quant) / _folder_bytes(fp32)
    assert ratio <= limit, f"{dtype} artifact is {ratio:.0%} of fp32 (limit {limit:.0%})"
    model = ecograph.load(quant)
    feeds = {"x": rng.standard_normal((1, 512)).astype(np.float32)}
    _close(model(**feeds), interpret(g, feeds)[g.outputs[0].name])
    vm_text = build.build_module(g, "x86", keep_params=False).executable.as_text()
    # One fused kernel per matmul (the ReLU between them may be fused into the second one).
    calls = re.findall(r"call  (\S+) in:", vm_text)
    assert sum("dequantize_matmul" in c for c in calls) == 2, vm_text


def test_kept_params_hold_integer_weights(tmp_path):
    import ecograph

    g = _mlp(256)
    Quantize(mode="weight_only", dtype="int4", granularity="group:128").run(g)
    out = ecograph.compile(g, "x86", tmp_path / "a", keep_params=True)
    manifest = runtime.read_manifest(out)
    with np.load(out / manifest["params"]["file"], allow_pickle=False) as params:
        weights = {k: params[k] for k in params.files if params[k].size >= 256 * 128}
    assert len(weights) == 2, {k: v.shape for k, v in weights.items()}
    # two 4-bit codes per byte: half the int8 bytes (256 columns fill whole panels)
    assert all(w.dtype == np.uint8 and w.nbytes == 256 * 128 for w in weights.values())
    feeds = {"x": rng.standard_normal((1, 256)).astype(np.float32)}
    _close(ecograph.load(out)(**feeds), interpret(g, feeds)[g.outputs[0].name])


def test_weight_only_int4_builds_for_cuda():
    """Compile only (no GPU needed): dlight schedules the fused kernel for the GPU."""
    g = _mlp(256)
    Quantize(mode="weight_only", dtype="int4", granularity="group:128").run(g)
    result = build.build_module(g, "cuda:sm_80", keep_params=False)
    assert result.executable.as_text().count("dequantize_matmul") >= 2


# ------------------------------------------------- com.microsoft::MatMulNBits through TVM


def _nbits_graph(
    k: int,
    block: int,
    zp: str,
    sdt: str = "float32",
    n: int = 24,
    bits: int = 4,
    rows: int | str = "m",
) -> Graph:
    k_blocks = -(-k // block)
    b = GraphBuilder()
    x = b.input("A", "float32", [rows, k])
    consts = [
        b.constant(rng.integers(0, 256, (n, k_blocks, block * bits // 8)).astype(np.uint8), "B"),
        b.constant(rng.uniform(0.01, 0.1, n * k_blocks).astype(sdt), "scales"),
    ]
    if zp == "packed":
        per_byte = 8 // bits
        consts.append(
            b.constant(rng.integers(0, 256, n * -(-k_blocks // per_byte)).astype("u1"), "zp")
        )
    elif zp == "float":
        consts.append(b.constant(rng.uniform(0, 15, n * k_blocks).astype(sdt), "zp"))
    attrs = {"K": k, "N": n, "bits": bits, "block_size": block}
    b.output(b.op("MatMulNBits", x, *consts, domain="com.microsoft", name="y", **attrs))
    return b.graph


@pytest.mark.parametrize(
    "k,block,zp,sdt",
    [(64, 32, "none", "float32"), (80, 16, "packed", "float32"), (128, 128, "float", "float32"),
     (64, 32, "packed", "float16")],
)  # fmt: skip
def test_matmul_nbits_runs_packed_in_one_kernel(k, block, zp, sdt):
    """Float32 scales with no or packed zero points: repacked into the matmul rule's panels
    (ops/weight_panels.py) and register-blocked; float zero points and float16 scales: the
    generic kernel reading ONNX Runtime's layout."""
    g = _nbits_graph(k, block, zp, sdt)
    feeds = {"A": rng.standard_normal((3, k)).astype(np.float32)}
    _close(_run(g, feeds), interpret(g, feeds)["y"])
    result = build.build_module(g, "x86", keep_params=False)
    paneled = zp != "float" and sdt == "float32"
    kernel = "dequantize_matmul" if paneled else "dequantize_matmul_nbits"
    assert f"call  {kernel} in:" in result.executable.as_text()
    if paneled:
        assert result.kernels[kernel] == "matmul", result.kernels


@pytest.mark.parametrize("bits,k,block,zp", [(8, 72, 32, "packed"), (4, 72, 32, "none")])
def test_matmul_nbits_partial_blocks_and_8_bit_codes_in_panels(bits, k, block, zp):
    """K not a multiple of the block (the last block is partial) and 8-bit codes, one row
    (decode) and several: the panel kernel matches the reference."""
    g = _nbits_graph(k, block, zp, n=40, bits=bits)
    for rows in (1, 5):
        feeds = {"A": rng.standard_normal((rows, k)).astype(np.float32)}
        _close(_run(g, feeds), interpret(g, feeds)["y"])
    kernels = build.build_module(g, "x86", keep_params=False).kernels
    assert kernels.get("dequantize_matmul") == "matmul", kernels


def test_matmul_nbits_artifact_stays_packed(tmp_path):
    """The packed 4-bit weights, not float32 ones, are what the artifact carries."""
    import ecograph

    g = _nbits_graph(1024, 128, "packed", n=512)
    out = ecograph.compile(g, "x86", tmp_path / "nbits", keep_params=False)
    fp32_weight_bytes = 1024 * 512 * 4
    assert _folder_bytes(out) < 0.25 * fp32_weight_bytes, _folder_bytes(out)
    feeds = {"A": rng.standard_normal((1, 1024)).astype(np.float32)}
    _close(ecograph.load(out)(**feeds), interpret(g, feeds)["y"])


# ------------------------------------------------------------------ ARM


def _two_layer_weight_only() -> Graph:
    """x[3, 64] -> int4 (blocks of 32 along K, zero points) -> int8 (per column) products."""
    b = GraphBuilder()
    x = b.input("x", "float32", [3, 64])
    q4 = rng.integers(-8, 8, (64, 40)).astype(ml_dtypes.int4)
    s4 = rng.uniform(0.01, 0.1, (2, 40)).astype("f4")
    z4 = rng.integers(-8, 8, (2, 40)).astype(ml_dtypes.int4)
    h = b.op("MatMul", x, b.op("DequantizeLinear", b.constant(q4, "w4"), b.constant(s4, "s4"),
                               b.constant(z4, "z4"), axis=0, block_size=32))  # fmt: skip
    q8 = rng.integers(-128, 128, (40, 24)).astype(np.int8)
    s8 = rng.uniform(0.01, 0.1, 24).astype("f4")
    w8 = b.op("DequantizeLinear", b.constant(q8, "w8"), b.constant(s8, "s8"), axis=1)
    b.output(b.op("MatMul", b.op("Relu", h), w8))
    return b.graph


ARM_TARGETS = {
    "arm": "arm",
    "arm-dotprod": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]},
}


@pytest.mark.parametrize("name", list(ARM_TARGETS))
def test_arm_weight_only_kernels_are_register_blocked(name):
    result = build.build_module(_two_layer_weight_only(), ARM_TARGETS[name], keep_params=False)
    rules = {k: r for k, r in result.kernels.items() if "dequantize_matmul" in k}
    assert len(rules) == 2 and set(rules.values()) == {"matmul"}, result.kernels


EMULATOR_MISSING = rpc.emulator_ready()


@pytest.mark.emulator
@pytest.mark.skipif(EMULATOR_MISSING is not None, reason=str(EMULATOR_MISSING))
def test_arm_weight_only_products_match_the_interpreter_on_the_emulated_device(tmp_path):
    import ecograph
    from ecograph import remote

    g = _two_layer_weight_only()
    art = ecograph.compile(g, "arm", tmp_path / "arm", progress=False)
    feeds = {"x": rng.standard_normal((3, 64)).astype(np.float32)}
    with remote.EmulatedArmDevice() as device:
        got = np.asarray(remote.connect(art, device.host, device.port)(**feeds))
    _close(got, interpret(g, feeds)[g.outputs[0].name])
