"""Every CPU step runs each decoder layer as one native call (``sw_decoder_layer``).

A step spends more time dispatching ~50 PyTorch ops per layer than computing them unless
it is large, and the PyTorch path rounds differently from the native one. With
``QuantLinear`` layers in place, ``install_fused_decoder`` replaces the model's
``run_layers`` on the instance: every token of every step — decodes and prefill chunks
alike — attends through the paged KV cache in C, so a request's results are bitwise the
same whatever else shares its step. The model file knows nothing of it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import torch

from servewise.layers import native
from servewise.layers.attention import AttentionMetadata
from servewise.layers.quant_linear import QuantLinear, QWeight, qweight_struct

_p, _i64 = ctypes.c_void_p, ctypes.c_int64


class _LayerWeights(ctypes.Structure):
    _fields_ = [("input_norm", _p), ("post_norm", _p), ("qkv", QWeight), ("o", QWeight),
                ("gate_up", QWeight), ("down", QWeight)]


class _StepMeta(ctypes.Structure):
    _fields_ = [("num_tokens", _i64), ("hidden", _i64), ("num_heads", _i64), ("num_kv_heads", _i64),
                ("head_dim", _i64), ("intermediate", _i64), ("block_size", _i64), ("max_blocks_per_row", _i64),
                ("eps", ctypes.c_float), ("sm_scale", ctypes.c_float), ("kv_is_f16", ctypes.c_int),
                ("cos", _p), ("sin", _p), ("positions", _p), ("slot_blocks", _p), ("slot_offsets", _p),
                ("block_tables", _p), ("token_rows", _p), ("ctx_lens", _p)]


def _qweight(layer: QuantLinear) -> QWeight:
    return qweight_struct(layer.weight_blocks, layer.bias)


RunLayers = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata, list[Any]], torch.Tensor]


def paged_view(meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(block_tables [R, M] int32, token_rows [T] int32, ctx_lens [T] int32) for every token of
    the step: each dense segment (a prefill chunk) becomes one more row of the block table."""
    if not meta.dense_segments:
        return meta.paged_block_tables, meta.paged_token_rows, meta.paged_ctx_lens
    paged_rows = meta.paged_block_tables.shape[0] if meta.num_paged_tokens else 0
    width = max([meta.paged_block_tables.shape[1]] + [len(s.block_ids) for s in meta.dense_segments])
    tables = torch.zeros(paged_rows + len(meta.dense_segments), width, dtype=torch.int32)
    tables[:paged_rows, :meta.paged_block_tables.shape[1]] = meta.paged_block_tables[:paged_rows]
    token_rows, ctx_lens = [meta.paged_token_rows[:meta.num_paged_tokens]], [meta.paged_ctx_lens[:meta.num_paged_tokens]]
    for i, seg in enumerate(meta.dense_segments):
        tables[paged_rows + i, :len(seg.block_ids)] = seg.block_ids
        token_rows.append(torch.full((seg.num_tokens,), paged_rows + i, dtype=torch.int32))
        first = seg.num_context_tokens + 1
        ctx_lens.append(torch.arange(first, first + seg.num_tokens, dtype=torch.int32))
    return tables, torch.cat(token_rows), torch.cat(ctx_lens)


class FusedDecoder:
    """Callable with the signature of ``LlamaForCausalLM.run_layers``."""

    def __init__(self, model: Any, lib: ctypes.CDLL, fallback: RunLayers) -> None:
        cfg = model.config
        self.lib = lib
        self.fallback = fallback
        self.cfg = cfg
        self.rotary = model.rotary
        self.weights = []
        for layer in model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.weights.append(_LayerWeights(
                layer.input_layernorm.weight.data_ptr(), layer.post_attention_layernorm.weight.data_ptr(),
                _qweight(attn.qkv_proj), _qweight(attn.o_proj), _qweight(mlp.gate_up_proj), _qweight(mlp.down_proj)))
        self._keepalive = model  # the pointers above belong to its tensors
        self.eps = float(model.layers[0].input_layernorm.eps)
        self._work = torch.empty(0, dtype=torch.uint8)  # grown to the largest step, reused

    def accepts(self, x: torch.Tensor, kv_caches: list[Any]) -> bool:
        return x.device.type == "cpu" and kv_caches[0][0].dtype in (torch.float32, torch.float16)

    def _workspace(self, num_tokens: int) -> torch.Tensor:
        cfg = self.cfg
        size = self.lib.sw_decoder_work_bytes(num_tokens, cfg.hidden_size, cfg.num_attention_heads,
                                              cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size)
        if self._work.numel() < size:
            self._work = torch.empty(size, dtype=torch.uint8)
        return self._work

    def __call__(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata,
                 kv_caches: list[Any]) -> torch.Tensor:
        if not self.accepts(x, kv_caches):
            return self.fallback(positions, x, meta, kv_caches)
        cfg = self.cfg
        num_tokens = x.shape[0]
        k0 = kv_caches[0][0]
        tables, token_rows, ctx_lens = paged_view(meta)
        step = _StepMeta(
            num_tokens, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
            cfg.intermediate_size, k0.shape[2], tables.shape[1], self.eps, cfg.head_dim ** -0.5,
            int(k0.dtype == torch.float16), self.rotary.cos.data_ptr(), self.rotary.sin.data_ptr(),
            positions.data_ptr(), meta.slot_block_ids.data_ptr(), meta.slot_offsets.data_ptr(),
            tables.data_ptr(), token_rows.data_ptr(), ctx_lens.data_ptr())
        work = self._workspace(num_tokens)
        x = x.contiguous()
        for weights, (k_cache, v_cache) in zip(self.weights, kv_caches, strict=True):
            rc = self.lib.sw_decoder_layer(x.data_ptr(), ctypes.byref(weights), k_cache.data_ptr(),
                                           v_cache.data_ptr(), ctypes.byref(step), work.data_ptr())
            if rc != 0:
                raise ValueError(f"fused decoder layer rejected the shapes (code {rc})")
        return x


def install_fused_decoder(model: Any, lib: ctypes.CDLL) -> bool:
    """Route every CPU step of ``model`` through C; False (nothing changed) if it cannot."""
    layers = list(model.layers)
    if not layers:
        return False
    linears = [m for layer in layers for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                              layer.mlp.gate_up_proj, layer.mlp.down_proj)]
    if not all(isinstance(m, QuantLinear) for m in linears):
        return False
    if not native.supports(model.config.num_attention_heads, model.config.num_key_value_heads,
                           model.config.head_dim, 128):
        return False
    model.run_layers = FusedDecoder(model, lib, model.run_layers)
    return True
