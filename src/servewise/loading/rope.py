"""Recover Hugging Face's ``llama3`` rope scaling from a GGUF ``rope_freqs.weight`` tensor.

llama.cpp's converter does not store Llama 3.1's rope_scaling parameters; it bakes them into one
divisor per rotary frequency (``rope_freqs``): 1 for short wavelengths, ``factor`` for long ones,
and in between ``1 / ((1 - s) / factor + s)`` with ``s = (orig / wavelen - low) / (high - low)``.
The smooth part is linear in 1/wavelen, so two of its points give ``orig / (high - low)`` and
``low / (high - low)``; only these ratios matter, so we fix ``low_freq_factor = 1`` (Llama's
value). The result is checked by recomputing the factors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_DEFAULT_ORIGINAL_CONTEXT = 8192  # Llama 3's, used when the smooth band is too narrow to fit


def llama3_rope_factors(params: dict[str, Any], rope_theta: float, head_dim: int) -> np.ndarray:
    """The per-frequency divisors llama.cpp's converter writes for these llama3 parameters."""
    freqs = 1.0 / (rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    orig = params["original_max_position_embeddings"]
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < orig / high:
            factors.append(1.0)
        elif wavelen > orig / low:
            factors.append(factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _fit_smooth_band(factors: np.ndarray, factor: float, rope_theta: float, head_dim: int) -> tuple[float, float] | None:
    freqs = 1.0 / (rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    inv_wavelen = freqs / (2 * math.pi)
    band = (factors > 1.0 + 1e-6) & (factors < factor - 1e-6 * factor)
    if band.sum() < 2:
        return None
    smooth = (1.0 / factors[band].astype(np.float64) - 1.0 / factor) / (1.0 - 1.0 / factor)
    slope, intercept = np.polyfit(inv_wavelen[band], smooth, 1)
    if intercept >= 0 or slope <= 0:
        return None
    # smooth = slope / wavelen + intercept with slope = orig/(high-low), intercept = -low/(high-low)
    high = 1.0 - 1.0 / intercept  # with low = 1
    orig = slope * (high - 1.0)
    return orig, high


def llama3_params_from_factors(factors: np.ndarray, rope_theta: float, head_dim: int,
                               original_context: int | None) -> dict[str, Any] | None:
    """HF ``rope_scaling`` dict reproducing `factors`, or None if they are not llama3's shape."""
    factors = np.asarray(factors, dtype=np.float32)
    if factors.shape != (head_dim // 2,) or not np.all(np.isfinite(factors)) or np.any(factors <= 0):
        return None
    factor = float(factors.max())
    if factor <= 1.0 + 1e-6:
        return None
    fitted = _fit_smooth_band(factors, factor, rope_theta, head_dim)
    if fitted is not None:
        orig, high = fitted
        low = 1.0
        # The fit carries float32 noise; snap to the round values configs use.
        if abs(orig - round(orig)) < 1e-3 * max(1.0, orig):
            orig = round(orig)
        if abs(high - round(high, 3)) < 1e-5 * high:
            high = round(high, 3)
    else:
        orig, low, high = original_context or _DEFAULT_ORIGINAL_CONTEXT, 1.0, 4.0
    params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": float(high),
              "original_max_position_embeddings": orig}
    if not np.allclose(llama3_rope_factors(params, rope_theta, head_dim), factors, rtol=1e-4, atol=1e-6):
        return None
    return params
