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
    """Per-row int8 weights, bf16-rounded activations and outputs, whatever the kernel.

    At most ``max_int8_rows`` rows go through aten's int8 kernel (bandwidth-bound
    steps); more rows go through fp32 GEMM on the *same* effective weights
    (q × scale, exact in fp32) with the same bf16 rounding of inputs and outputs.
    Both paths compute the same function up to fp32 summation order, so a request's
    tokens do not depend on how many others share its step (measured: bitwise
    equal outputs at 1-4 rows, one bf16 ulp on ~0.03% of outputs at 16 rows).
    """

    def __init__(self, linear: nn.Linear, max_int8_rows: int, keep_fp32: bool = True) -> None:
        super().__init__()
        q, scale = quantize_rows_int8(linear.weight)
        self.register_buffer("qweight", q, persistent=False)  # [out, in] int8
        self.register_buffer("scales", scale, persistent=False)  # [out] bf16
        # q × scale as fp32 for the GEMM path (exact: 8-bit × 8-bit mantissas fit in fp32)
        self.weight_eff = (q.float() * scale.float()[:, None]) if keep_fp32 else None
        self.bias = linear.bias
        self.max_int8_rows = max_int8_rows
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [M, in] fp32 -> [M, out] fp32
        xb = x.to(torch.bfloat16)
        if x.shape[0] > self.max_int8_rows and self.weight_eff is not None:
            y = F.linear(xb.float(), self.weight_eff).to(torch.bfloat16)
        else:
            y = torch.ops.aten._weight_int8pack_mm(xb, self.qweight, self.scales)
        y32 = y.float()
        return y32 if self.bias is None else y32 + self.bias


class DualLMHead(DualLinear):
    """The vocabulary projection: logits keep fp32 precision where it matters.

    bf16 logits (ulp 0.06 at 10) would turn near-ties into exact ties. Small steps
    rank the vocabulary with the int8 kernel, then recompute the top
    ``num_refined`` logits of each row exactly (fp32 activations × effective
    weights); large steps compute every logit in fp32. Either way the candidates
    that greedy decoding, top-k/top-p and logprobs look at are fp32-exact.
    """

    num_refined = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [M, hidden] fp32 -> logits [M, vocab] fp32
        if self.weight_eff is not None and x.shape[0] > self.max_int8_rows:
            return F.linear(x, self.weight_eff)
        approx = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.qweight, self.scales).float()
        top = approx.topk(min(self.num_refined, approx.shape[1]), dim=-1).indices  # [M, k]
        rows = self.qweight[top].float() * self.scales[top].float().unsqueeze(-1)  # [M, k, hidden]
        approx.scatter_(1, top, torch.einsum("mh,mkh->mk", x, rows))
        return approx


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
                cls = DualLMHead if parent is model and name == "lm_head" else DualLinear
                setattr(parent, name, cls(child, max_int8_rows, keep_fp32=keep_fp32))
