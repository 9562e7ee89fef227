"""Quantization presets: the names optimize() and the CLI accept, turned into a Quantize pass.

    quantize_pass("int8")                          # dynamic int8, per-token activations
    quantize_pass("int8-static", calibration_data)  # QDQ from calibration ranges
    quantize_pass({"mode": "weight_only", "dtype": "int4", "granularity": "group:64"})
    quantize_pass("palette4")                      # 16 k-means centroids per group of channels

The result is an ordinary pipeline item: optimize() and `ecograph optimize --quantize` run it
through the PassManager after the float pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ecograph.errors import EcographError
from ecograph.quant.quantize import Quantize

# The dynamic int8 default: one int8 scale per token (row) of each activation, computed at run
# time, and the matmuls fed by GELU (a transformer FFN's down projection, whose input has the
# widest range within a token) left in float. Measured on MiniLM-L6 (docs/quantization.md):
# per-tensor scales missed optimize()'s 0.99 budget on 186 of 209 padded sentences, per-token
# scales on 67, per-token with the down projections in float on 1 (mean cosine 0.9975), and that
# build still runs in 0.6x the fp32 build's time.
INT8_DYNAMIC: dict[str, Any] = {
    "mode": "dynamic",
    "dtype": "int8",
    "activations": "token",
    "float_after": ("Gelu",),
}

QUANTIZE_PRESETS: dict[str, dict[str, Any]] = {
    "int8": INT8_DYNAMIC,
    "int8-dynamic": INT8_DYNAMIC,
    "int8-static": {"mode": "static", "dtype": "int8"},
    "int8-weight": {"mode": "weight_only", "dtype": "int8", "granularity": "channel"},
    "int4": {"mode": "weight_only", "dtype": "int4", "granularity": "group:128"},
    "int4-weight": {"mode": "weight_only", "dtype": "int4", "granularity": "group:128"},
    # int4 weights and, at run time, int8 activations in blocks of the weight groups: the
    # product in 8-bit integers on CPUs (ONNX Runtime's MatMulNBits at accuracy_level 4).
    "int4-a8": {
        "mode": "weight_only",
        "dtype": "int4",
        "granularity": "group:128",
        "activations": "block",
    },
    # Dictionary coding: 4-bit (16 k-means centroids) or 8-bit (256) codes; see
    # docs/quantization.md for the group sizes and what they cost in accuracy and bytes.
    "palette4": {"mode": "palette", "palette_bits": 4, "granularity": "group:16"},
    "palette8": {"mode": "palette", "palette_bits": 8, "granularity": "tensor"},
}


def quantize_pass(
    spec: str | Mapping[str, Any] | Quantize, calibration_data: Iterable[Any] | None = None
) -> Quantize:
    """A Quantize pass for a preset name, a dict of Quantize options, or a Quantize pass
    (returned as is).

    `calibration_data` (an iterable of {input name: array}) is read once into a list and
    goes to the pass: static mode needs it (and shows calibration progress unless the
    options say otherwise), GPTQ and SmoothQuant read it; any other quantization raises
    rather than ignore it."""
    if isinstance(spec, Quantize):
        return spec
    if isinstance(spec, str):
        if spec not in QUANTIZE_PRESETS:
            raise EcographError(
                f"quantize={spec!r}: expected one of {sorted(QUANTIZE_PRESETS)}, a dict of "
                "Quantize options, or a Quantize pass"
            )
        options = dict(QUANTIZE_PRESETS[spec])
    elif isinstance(spec, Mapping):
        options = dict(spec)
    else:
        raise EcographError(f"quantize={spec!r} is not a preset name, dict or Quantize pass")
    if calibration_data is not None:
        if options.get("calibration_data") is not None:
            raise EcographError(
                "calibration data given twice (calibration_data= and in the quantize options); "
                "give it once"
            )
        options["calibration_data"] = list(calibration_data)
    if options.get("mode") == "static":
        if options.get("calibration_data") is None:
            raise EcographError("static quantization needs calibration_data=[{input: array}...]")
        options.setdefault("progress", True)
    return Quantize(**options)
