"""Linear-layer kernels chosen after the model is built (the model files never know).

On CPU, a decode step with few tokens is bound by reading weights: int8 weights
read 4× fewer bytes than fp32 (aten ``_weight_int8pack_mm``, whose vectorised
path wants bf16 activations). A step with many tokens is bound by FLOPs, where
MKL's fp32 GEMM wins. ``DualLinear`` keeps both and picks per call by the number
of rows, i.e. per engine step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Measured on the 2-core AVX2 machine (benchmarks/linear_kernels.py): int8pack beats
# fp32 GEMM up to about this many rows for SmolLM2's shapes.
DEFAULT_MAX_INT8_ROWS = 8


def quantize_rows_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: weight ≈ q * scale[:, None]; scale stored in bf16.

    The scale is rounded to bf16 *before* quantizing, so the bf16 storage adds no error.
    """
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).to(torch.bfloat16)
    scale_f = scale.float()
    q = torch.round(w / scale_f[:, None]).clamp_(-128, 127).to(torch.int8)
    return q.contiguous(), scale


class DualLinear(nn.Module):
    """int8 weight-only GEMM for at most ``max_int8_rows`` rows, fp32 GEMM above."""

    def __init__(self, linear: nn.Linear, max_int8_rows: int, keep_fp32: bool = True) -> None:
        super().__init__()
        q, scale = quantize_rows_int8(linear.weight)
        self.register_buffer("qweight", q, persistent=False)  # [out, in] int8
        self.register_buffer("scales", scale, persistent=False)  # [out] bf16
        self.weight = linear.weight if keep_fp32 else None  # shared with the original (tied embeddings)
        self.bias = linear.bias
        self.max_int8_rows = max_int8_rows if keep_fp32 else 1 << 62
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [M, in] fp32 -> [M, out] fp32
        if x.shape[0] > self.max_int8_rows and self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        y = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.qweight, self.scales).float()
        return y if self.bias is None else y + self.bias


def apply_linear_backend(model: nn.Module, backend: str, max_int8_rows: int = DEFAULT_MAX_INT8_ROWS) -> None:
    """Swap the model's nn.Linear layers in place for the chosen CPU backend.

    "fp32": leave them (batch-invariant, matches transformers bit for bit in GEMM shape);
    "auto": DualLinear (int8 for small steps, fp32 for large); "int8": int8 only.
    """
    if backend == "fp32":
        return
    keep_fp32 = backend == "auto"
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, DualLinear(child, max_int8_rows, keep_fp32=keep_fp32))
