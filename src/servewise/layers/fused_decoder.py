"""Small steps run each decoder layer as one native call (see ``sw_decoder_layer`` in kernels.c).

A decode step of a few sequences spends more time dispatching ~50 PyTorch ops per
layer than computing them. With int8 linear layers (``DualLinear``) in place,
``install_fused_decoder`` replaces the model's ``run_layers`` on the instance:
steps of at most ``max_rows`` tokens whose attention is all paged go through C,
everything else through the PyTorch layers. The model file knows nothing of it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import torch

from servewise.layers import native
from servewise.layers.attention import AttentionMetadata
from servewise.layers.linear import DualLinear

_p, _i64 = ctypes.c_void_p, ctypes.c_int64


class _QLinear(ctypes.Structure):
    _fields_ = [("q", _p), ("scales", _p), ("bias", _p), ("n", _i64), ("k", _i64)]


class _LayerWeights(ctypes.Structure):
    _fields_ = [("input_norm", _p), ("post_norm", _p), ("qkv", _QLinear), ("o", _QLinear),
                ("gate_up", _QLinear), ("down", _QLinear)]


class _StepMeta(ctypes.Structure):
    _fields_ = [("num_tokens", _i64), ("hidden", _i64), ("num_heads", _i64), ("num_kv_heads", _i64),
                ("head_dim", _i64), ("intermediate", _i64), ("block_size", _i64), ("max_blocks_per_row", _i64),
                ("eps", ctypes.c_float), ("sm_scale", ctypes.c_float), ("kv_is_f16", ctypes.c_int),
                ("cos", _p), ("sin", _p), ("positions", _p), ("slot_blocks", _p), ("slot_offsets", _p),
                ("block_tables", _p), ("token_rows", _p), ("ctx_lens", _p)]


def _qlinear(layer: DualLinear) -> _QLinear:
    bias = layer.bias.data_ptr() if layer.bias is not None else None
    return _QLinear(layer.qweight.data_ptr(), layer.scales.data_ptr(), bias, layer.out_features,
                    layer.in_features)


RunLayers = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata, list[Any]], torch.Tensor]


class FusedDecoder:
    """Callable with the signature of ``LlamaForCausalLM.run_layers``."""

    def __init__(self, model: Any, lib: ctypes.CDLL, max_rows: int, fallback: RunLayers) -> None:
        cfg = model.config
        self.lib = lib
        self.max_rows = max_rows
        self.fallback = fallback
        self.cfg = cfg
        self.rotary = model.rotary
        self.weights = []
        for layer in model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.weights.append(_LayerWeights(
                layer.input_layernorm.weight.data_ptr(), layer.post_attention_layernorm.weight.data_ptr(),
                _qlinear(attn.qkv_proj), _qlinear(attn.o_proj), _qlinear(mlp.gate_up_proj), _qlinear(mlp.down_proj)))
        self._keepalive = model  # the pointers above belong to its tensors
        self.eps = float(model.layers[0].input_layernorm.eps)
        self.qkv_n = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim

    def accepts(self, x: torch.Tensor, meta: AttentionMetadata, kv_caches: list[Any]) -> bool:
        return (x.shape[0] <= self.max_rows and not meta.dense_segments and x.device.type == "cpu"
                and kv_caches[0][0].dtype in (torch.float32, torch.float16))

    def __call__(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata,
                 kv_caches: list[Any]) -> torch.Tensor:
        if not self.accepts(x, meta, kv_caches):
            return self.fallback(positions, x, meta, kv_caches)
        cfg = self.cfg
        num_tokens = x.shape[0]
        k0 = kv_caches[0][0]
        step = _StepMeta(
            num_tokens, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
            cfg.intermediate_size, k0.shape[2], meta.paged_block_tables.shape[1], self.eps, cfg.head_dim ** -0.5,
            int(k0.dtype == torch.float16), self.rotary.cos.data_ptr(), self.rotary.sin.data_ptr(),
            positions.data_ptr(), meta.slot_block_ids.data_ptr(), meta.slot_offsets.data_ptr(),
            meta.paged_block_tables.data_ptr(), meta.paged_token_rows.data_ptr(), meta.paged_ctx_lens.data_ptr())
        q_size = cfg.num_attention_heads * cfg.head_dim
        width = max(cfg.hidden_size, cfg.intermediate_size) + self.qkv_n + q_size + 2 * cfg.intermediate_size
        work = torch.empty(num_tokens * width, dtype=torch.float32)
        x = x.contiguous()
        for weights, (k_cache, v_cache) in zip(self.weights, kv_caches, strict=True):
            rc = self.lib.sw_decoder_layer(x.data_ptr(), ctypes.byref(weights), k_cache.data_ptr(),
                                           v_cache.data_ptr(), ctypes.byref(step), work.data_ptr())
            if rc != 0:
                raise ValueError(f"fused decoder layer rejected the shapes (code {rc})")
        return x


def install_fused_decoder(model: Any, max_rows: int) -> bool:
    """Route small steps of ``model`` through C; False (nothing changed) if it cannot."""
    lib = native.load_library()
    layers = list(model.layers)
    if lib is None or not layers:
        return False
    linears = [m for layer in layers for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                              layer.mlp.gate_up_proj, layer.mlp.down_proj)]
    if not all(isinstance(m, DualLinear) for m in linears):
        return False
    if not native.supports(model.config.num_attention_heads, model.config.num_key_value_heads,
                           model.config.head_dim, 128):
        return False
    model.run_layers = FusedDecoder(model, lib, max_rows, model.run_layers)
    return True
