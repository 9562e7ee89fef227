"""Quantization: parameters, calibration, the Quantize and integer-lowering passes, presets
(`presets.quantize_pass`), sensitivity and accuracy budgets (see ecograph/quant/*.py)."""
