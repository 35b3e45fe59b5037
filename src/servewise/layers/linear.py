"""Linear-layer kernels chosen after the model is built (the model files never know).

On CPU a decode step with few tokens is bound by reading weights: int8 weights
read 4× fewer bytes than fp32. A step with many tokens is bound by FLOPs, where
MKL's fp32 GEMM wins. ``DualLinear`` keeps both forms of the *same* weights and
picks per call by the number of rows, i.e. per engine step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from servewise.layers import native

# Up to this many rows the native int8 kernel beats fp32 GEMM on SmolLM2's shapes
# (2-core AVX2; benchmarks/throughput.py); above it MKL's fp32 GEMM wins.
DEFAULT_MAX_INT8_ROWS = 16
# MKL's sgemm is slow for 16 < M < 64 with weights streamed from memory (M=32 takes longer
# than M=64); with weights packed once for exactly 64 rows it is 2× faster. Steps of
# 17-64 rows are padded to 64 and use the packed weights.
PACKED_ROWS = 64


def _mkl_packing_available() -> bool:
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def quantize_rows_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: weight ≈ q * scale[:, None].

    The scale is rounded to bf16 precision *before* quantizing: q (8 bits) × scale (8-bit
    mantissa) is then exact in fp32, so the int8 kernel and the fp32 GEMM on q × scale
    see exactly the same weights.
    """
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).to(torch.bfloat16)
    scale_f = scale.float()
    q = torch.round(w / scale_f[:, None]).clamp_(-128, 127).to(torch.int8)
    return q.contiguous(), scale


class DualLinear(nn.Module):
    """Per-row int8 weights; fp32 activations and outputs whatever the kernel.

    At most ``max_int8_rows`` rows go through the native int8 kernel (bandwidth-bound
    steps); more rows go through fp32 GEMM on the same effective weights (q × scale,
    exact in fp32). Both compute the same function up to fp32 summation order, and the
    native kernel sums each row the same way whatever the number of rows.
    """

    qweight: torch.Tensor
    scales: torch.Tensor

    def __init__(self, linear: nn.Linear, max_int8_rows: int, keep_fp32: bool = True) -> None:
        super().__init__()
        q, scale = quantize_rows_int8(linear.weight)
        self.register_buffer("qweight", q, persistent=False)  # [out, in] int8
        self.register_buffer("scales", scale.float(), persistent=False)  # [out] fp32 (bf16-representable)
        # q × scale in fp32 for the GEMM path (exact: 8-bit × 8-bit mantissas fit in fp32). Without a
        # native kernel it serves every step; "int8" drops it to save memory when the kernel exists.
        self._lib = native.load_library()
        self.weight_eff = q.float() * self.scales[:, None] if keep_fp32 or self._lib is None else None
        self.packed = (torch.ops.mkl._mkl_reorder_linear_weight(self.weight_eff, PACKED_ROWS)
                       if self.weight_eff is not None and _mkl_packing_available() else None)
        self.bias = linear.bias
        self.max_int8_rows = max_int8_rows if self._lib is not None else 0
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [M, in] fp32 -> [M, out] fp32
        rows = x.shape[0]
        if self._lib is not None and (rows <= self.max_int8_rows or self.weight_eff is None):
            return native.int8_linear(self._lib, x, self.qweight, self.scales, self.bias)
        assert self.weight_eff is not None
        if self.packed is not None and rows <= PACKED_ROWS:
            padded = x if rows == PACKED_ROWS else F.pad(x, (0, 0, 0, PACKED_ROWS - rows))
            return torch.ops.mkl._mkl_linear(padded, self.packed, self.weight_eff, self.bias, PACKED_ROWS)[:rows]
        return F.linear(x, self.weight_eff, self.bias)


def apply_linear_backend(model: nn.Module, backend: str, max_int8_rows: int = DEFAULT_MAX_INT8_ROWS) -> None:
    """Swap the model's nn.Linear layers in place for the chosen CPU backend.

    "fp32": leave them (the checkpoint's weights exactly; matches transformers);
    "auto": DualLinear, int8 kernel for small steps and fp32 GEMM for large ones;
    "int8": DualLinear with the int8 kernel only (no fp32 copy: least memory).
    """
    if backend == "fp32":
        return
    keep_fp32 = backend == "auto"
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, DualLinear(child, max_int8_rows, keep_fp32=keep_fp32))
