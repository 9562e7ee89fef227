"""Quantization: parameters, calibration, the Quantize and integer-lowering passes, presets
(`presets.quantize_pass`), sensitivity and accuracy budgets (see ecograph/quant/*.py)."""

# Registered names of the passes that quantize a graph: a run where one of them changed the
# graph is judged against the quantized accuracy budget, and the report lists a quantized stage.
QUANTIZING_PASSES = frozenset({"quantize", "quantize-within-budget", "lower-qdq-to-integer"})


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
