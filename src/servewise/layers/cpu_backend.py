"""The CPU model transform: quantized layers and native kernels for a model built on meta.

    cpu = CpuBackend.create("auto", cpu_isa="auto")
    model = build_model(..., transform=cpu.quantize)   # linears become QuantLinear, before any load
    cpu.install(model)                                  # after the load: attention + fused layers

Linear backends:
- "fp32": the checkpoint's weights exactly, PyTorch GEMMs (matches transformers token for token).
- "auto": each linear keeps the width it is stored at — 4-bit GGUF blocks stay 4-bit, Q8_0
  stays 8-bit, float or other types become 8-bit blocks — and so does the lm_head (tied to
  the embedding, which then looks its rows up in the same blocks).
- "int8": every linear in 8-bit blocks (4-bit weights requantized from their values).
Quantized layers replace the meta-device nn.Linear before weights are loaded, so no fp32
copy of them ever exists. Without a C compiler the quantized backends run as "fp32".
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from servewise.layers import native
from servewise.layers.attention import PagedAttention
from servewise.layers.fused_decoder import install_fused_decoder
from servewise.layers.quant_linear import QuantEmbedding, QuantLinear
from servewise.layers.quant_weights import PackedWeight, WeightPart, block_rows, pack

logger = logging.getLogger(__name__)

LINEAR_BACKENDS = ("auto", "fp32", "int8")
# Row counts where the quantized GEMM changes regime (native/quant_gemm.c): up to
# SW_PREFETCH_ROWS rows a weight tile streams ahead of its use; SW_PANEL_ROWS rows of
# activations are kept in L2 per weight tile. A capacity profile straddles both.
QUANT_GEMM_ROW_REGIMES = (16, 256)


class WeightSource(Protocol):
    """A model's checkpoint tensors by *model* parameter name, each taken at most once."""

    def take_parts(self, name: str) -> list[WeightPart]: ...  # the tensors stacked into parameter `name`

    def take_float(self, name: str) -> torch.Tensor | None: ...  # fp32, None when the checkpoint has none


@dataclass
class CpuBackend:
    linear_backend: str  # "auto" | "fp32" | "int8", as requested
    isa: str  # the kernels' build in use: "avx512" | "avx2" | "generic", or "none" (no compiler)
    lib: ctypes.CDLL | None

    @classmethod
    def create(cls, linear_backend: str, cpu_isa: str = "auto") -> CpuBackend:
        if linear_backend not in LINEAR_BACKENDS:
            raise ValueError(f"linear_backend must be one of {LINEAR_BACKENDS}, got {linear_backend!r}")
        lib = native.load_library(cpu_isa)
        isa = native.library_isa(lib) if lib is not None else "none"
        features = native.probe_cpu()
        logger.info("CPU kernels: %s (requested %s; %s)", isa, cpu_isa,
                    features.describe() if features is not None else "CPU not probed")
        if lib is None and linear_backend != "fp32":
            logger.warning("no native kernels: linear backend %s runs as fp32", linear_backend)
        return cls(linear_backend, isa, lib)

    @property
    def quantized(self) -> bool:
        return self.lib is not None and self.linear_backend != "fp32"

    def quantize(self, model: nn.Module, weights: WeightSource) -> None:
        """Swap the meta model's linear layers for quantized ones, and the embedding too when it
        is tied to the lm_head or stored quantized (a float, untied one stays exact)."""
        if not self.quantized:
            return
        assert self.lib is not None
        bits = 8 if self.linear_backend == "int8" else None
        tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and not (tied and name == "lm_head"):
                packed = _packed(weights, f"{name}.weight", bits, module.weight.shape)
                _replace(model, name, QuantLinear(packed, weights.take_float(f"{name}.bias"), self.lib))
        embedding = model.get_submodule("embed_tokens")
        assert isinstance(embedding, nn.Embedding)
        if tied or all(p.raw is not None for p in weights.take_parts("embed_tokens.weight")):
            table = _packed(weights, "embed_tokens.weight", bits, embedding.weight.shape)
            _replace(model, "embed_tokens", QuantEmbedding(table, self.lib))
            if tied:
                _replace(model, "lm_head", QuantLinear(table, None, self.lib))

    def install(self, model: nn.Module) -> None:
        """After the weights are loaded: attention on this build's kernels, layers fused in C."""
        for module in model.modules():
            attention = getattr(module, "attn", None)  # PagedAttention is a plain object, not a module
            if isinstance(attention, PagedAttention):
                attention.native_lib = self.lib
        if self.quantized:
            assert self.lib is not None
            if not install_fused_decoder(model, self.lib):
                logger.info("fused decoder layers unavailable for this model: PyTorch layers over QuantLinear")


def _packed(weights: WeightSource, name: str, bits: int | None, shape: torch.Size) -> PackedWeight:
    packed = pack(block_rows(weights.take_parts(name), bits))
    if (packed.n, packed.k) != tuple(shape):
        raise ValueError(f"{name}: checkpoint weight is {packed.n}x{packed.k}, the model expects {tuple(shape)}")
    return packed


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)
