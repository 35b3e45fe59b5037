"""Linear and embedding layers over ``PackedWeight`` blocks, computed by the native kernels.

``QuantLinear`` quantizes its input rows to 15 bits per 32-wide block (two int8 planes) and
multiplies them by the stored 4-bit or 8-bit blocks with exact integer dot products
(native/quant_gemm.c); the weights are read once per call however many rows it has. ``QuantEmbedding`` looks
rows up in the same blocks, so a tied lm_head and embedding share one copy.

Error of one output y = sum_k w_k x_k, with the stored w exact: the activations are
rounded to x^ = dx * round(x / dx), dx = max|x_block| / 16256, so
    |y - y_ref| <= sum_blocks (dx / 2) * sum_{k in block} |w_k|   (+ fp32 rounding)
``error_bound`` computes it; the tests hold the kernels to it.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from servewise.layers.quant_weights import BLOCK, PackedWeight, dequantize

_p, _i64 = ctypes.c_void_p, ctypes.c_int64
ACT_BYTES_PER_BLOCK = 4 * BLOCK + 8  # per row and 32-wide block: 4 int8 planes, fp32 d and s (sw_qact_bytes)
ACT_QMAX = 127 * 128  # activations: |q| <= 16256, i.e. 15 bits kept as two int8 planes


class QWeight(ctypes.Structure):
    """sw_qweight in native/sw_kernels.h."""

    _fields_ = [("tiles", _p), ("bias", _p), ("n", _i64), ("k", _i64), ("kb", _i64), ("tile_bytes", _i64),
                ("bits", _i64)]


def qweight_struct(weight: PackedWeight, bias: torch.Tensor | None) -> QWeight:
    return QWeight(weight.tiles.data_ptr(), bias.data_ptr() if bias is not None else None, weight.n, weight.k,
                   weight.kb, weight.tile_bytes, weight.bits)


class QuantLinear(nn.Module):
    """y = x W^T + b with W in blocks. x: [M, in] fp32 -> [M, out] fp32."""

    def __init__(self, weight: PackedWeight, bias: torch.Tensor | None, lib: ctypes.CDLL) -> None:
        super().__init__()
        self.weight_blocks = weight
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.in_features, self.out_features = weight.k, weight.n
        self._lib = lib
        self._struct = qweight_struct(weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        rows = x.shape[0]
        out = torch.empty(rows, self.out_features, dtype=torch.float32)
        work = torch.empty(rows * self.weight_blocks.kb * ACT_BYTES_PER_BLOCK, dtype=torch.uint8)
        rc = self._lib.sw_qlinear(x.data_ptr(), rows, x.shape[1], ctypes.byref(self._struct), out.data_ptr(),
                                  work.data_ptr())
        if rc != 0:
            raise ValueError(f"quantized linear kernel rejected the shapes (code {rc})")
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.weight_blocks.bits}"


class QuantEmbedding(nn.Module):
    """Rows of a ``PackedWeight`` as fp32: ids [T] -> [T, dim]."""

    def __init__(self, weight: PackedWeight, lib: ctypes.CDLL) -> None:
        super().__init__()
        self.weight_blocks = weight
        self.num_embeddings, self.embedding_dim = weight.n, weight.k
        self._lib = lib
        self._struct = qweight_struct(weight, None)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(torch.int64).contiguous()
        out = torch.empty(ids.numel(), self.embedding_dim, dtype=torch.float32)
        if self._lib.sw_dequant_rows(ctypes.byref(self._struct), ids.data_ptr(), ids.numel(), out.data_ptr()) != 0:
            raise IndexError(f"token id out of range [0, {self.num_embeddings})")
        return out.reshape(*ids.shape, self.embedding_dim)


# ---- PyTorch references (tests compare the kernels with these) ------------------------------

def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' activation rounding: x [M, K] -> (q int16 [M, kb*32], d fp32 [M, kb])."""
    rows, k = x.shape
    kb = -(-k // BLOCK)
    blocks = nn.functional.pad(x.float(), (0, kb * BLOCK - k)).reshape(rows, kb, BLOCK)
    amax = blocks.abs().amax(dim=-1)
    d = amax / ACT_QMAX
    inv = torch.where(amax > 0, ACT_QMAX / amax, torch.zeros(()))
    q = torch.round((blocks * inv[..., None]).clamp_(-ACT_QMAX, ACT_QMAX))  # half to even, as the kernels
    return q.to(torch.int16).reshape(rows, -1), d


def reference_linear(x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """What the kernel computes, in float64: quantized activations times the stored weights."""
    q, d = quantize_activations(x)
    x_hat = (q.double().reshape(len(x), -1, BLOCK) * d.double()[..., None]).reshape(len(x), -1)[:, :weight.k]
    out = x_hat @ dequantize(weight).double().T
    return out if bias is None else out + bias.double()


def error_bound(x: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
    """Per output, the bound on |kernel - x W^T| from rounding the activations (see module doc)."""
    _, d = quantize_activations(x)
    w_abs = nn.functional.pad(dequantize(weight).abs().double(), (0, weight.kb * BLOCK - weight.k))
    block_sums = w_abs.reshape(weight.n, -1, BLOCK).sum(dim=-1)  # [N, kb]
    return (d.double() / 2) @ block_sums.T
