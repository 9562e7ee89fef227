"""Quantization: parameters, calibration, the Quantize and integer-lowering passes, presets
(`presets.quantize_pass`), sensitivity and accuracy budgets (see ecograph/quant/*.py)."""

from ecograph.ir.graph import Graph
from ecograph.ir.ops.ms_qlinear import EXPANSIONS

# Registered names of the passes that quantize a graph: a run where one of them changed the
# graph is judged against the quantized accuracy budget, and the report lists a quantized stage.
QUANTIZING_PASSES = frozenset({"quantize", "quantize-within-budget", "lower-qdq-to-integer"})


# Ops that round float activations to integer codes when they run (the QuantizeLinear family
# and the QLinear ops that requantize their results, ONNX Runtime's contrib ones included): a
# graph holding them is already a quantized model, whatever ecograph's passes do to it.
ROUNDING_OPS = frozenset(
    {
        ("", "QuantizeLinear"),
        ("", "DynamicQuantizeLinear"),
        ("", "QLinearConv"),
        ("", "QLinearMatMul"),
        *EXPANSIONS,
    }
)


def rounding_nodes(graph: Graph) -> int:
    """How many nodes of `graph` round computed (not constant) values to integer codes (a
    QGemm without y_scale returns float32: it does not)."""
    count = 0
    for n in graph.nodes:
        if (n.domain, n.op_type) not in ROUNDING_OPS:
            continue
        if n.op_type == "QGemm" and n.input(7) is None:
            continue
        count += not all(v is None or v.is_constant for v in n.inputs)
    return count


def quantization_notes(records: list) -> list[str]:
    """What the quantization passes of a PassManager run (its PassRecords) noted: the nodes
    they kept in float or excluded, and why, each prefixed with the pass name and given once
    (a fixed-point group repeats them). The report and `ecograph optimize` show them; the pass
    log has them only at info level. quantize-within-budget's outcome is reported apart."""
    notes: dict[str, None] = {}
    for r in records:
        if r.pass_name in ("quantize", "lower-qdq-to-integer") and r.result is not None:
            notes.update((f"{r.pass_name}: {n}", None) for n in r.result.notes)
    return list(notes)
