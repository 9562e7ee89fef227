"""Quantization: parameters, calibration, the Quantize and integer-lowering passes, presets
(`presets.quantize_pass`), sensitivity and accuracy budgets (see ecograph/quant/*.py)."""

# Registered names of the passes that quantize a graph: a run where one of them changed the
# graph is judged against the quantized accuracy budget, and the report lists a quantized stage.
QUANTIZING_PASSES = frozenset({"quantize", "quantize-within-budget", "lower-qdq-to-integer"})
