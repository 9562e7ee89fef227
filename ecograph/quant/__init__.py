"""Quantization: parameters, calibration, weight quantization (see ecograph/quant/*.py)."""
