"""GGUF metadata -> `ModelArchConfig` and the GGUF -> Hugging Face tensor names."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from servewise.config import ModelArchConfig
from servewise.errors import ModelLoadError
from servewise.loading.gguf_file import GGUFFile
from servewise.loading.rope import llama3_params_from_factors

# GGUF general.architecture -> our architecture. llama.cpp converts Mistral to "llama".
GGUF_ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
# llama.cpp's converter permutes Q/K rows of these for its interleaved rotary layout.
PERMUTED_QK_ARCHITECTURES = frozenset({"llama", "mistral"})
ROPE_FREQS_TENSOR = "rope_freqs.weight"

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(.+)")


def hf_tensor_name(gguf_name: str) -> str | None:
    """The Hugging Face parameter name of a GGUF tensor, or None if it is not a known one."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{int(match.group(1))}.{_LAYER_NAMES[match.group(2)]}"
    return None


def _required_int(gguf: GGUFFile, key: str) -> int:
    value = gguf.get_int(key)
    if value is None:
        raise gguf.error(f"metadata {key} is missing")
    return value


def _rope_scaling(gguf: GGUFFile, prefix: str, rope_theta: float, head_dim: int,
                  rope_freqs: np.ndarray | None) -> dict[str, Any] | None:
    kind = gguf.get_str(f"{prefix}.rope.scaling.type")
    factor = gguf.get_float(f"{prefix}.rope.scaling.factor")
    legacy_linear = gguf.get_float(f"{prefix}.rope.scale_linear")
    if kind == "linear" or (kind is None and legacy_linear is not None and legacy_linear != 1.0):
        factor = factor if kind == "linear" else legacy_linear
        if factor is None or factor <= 0:
            raise gguf.error("linear rope scaling without a positive factor")
        return {"rope_type": "linear", "factor": factor}
    if kind not in (None, "none"):
        raise gguf.error(f"unsupported rope scaling type {kind!r}; supported: linear, llama3")
    if rope_freqs is None:
        return None
    original = gguf.get_int(f"{prefix}.rope.scaling.original_context_length")
    params = llama3_params_from_factors(rope_freqs, rope_theta, head_dim, original)
    if params is None and np.any(np.abs(rope_freqs - 1.0) > 1e-6):
        raise gguf.error(f"{ROPE_FREQS_TENSOR} does not match llama3 rope scaling, the only kind supported")
    return params


def arch_config_from_gguf(gguf: GGUFFile, rope_freqs: np.ndarray | None) -> ModelArchConfig:
    """Hyperparameters from the metadata; bos/eos ids are filled in by the caller."""
    gguf_arch = gguf.get_str("general.architecture")
    if gguf_arch is None:
        raise gguf.error("metadata general.architecture is missing")
    if gguf_arch not in GGUF_ARCHITECTURES:
        raise gguf.error(f"unknown architecture {gguf_arch!r}; supported: {', '.join(GGUF_ARCHITECTURES)}")
    p = gguf_arch
    if (gguf.get_int(f"{p}.expert_count") or 0) > 0:
        raise gguf.error("mixture-of-experts models are not supported")
    hidden = _required_int(gguf, f"{p}.embedding_length")
    num_heads = _required_int(gguf, f"{p}.attention.head_count")
    num_kv_heads = gguf.get_int(f"{p}.attention.head_count_kv", num_heads)
    head_dim = gguf.get_int(f"{p}.attention.key_length") or gguf.get_int(f"{p}.rope.dimension_count") \
        or (hidden // num_heads if num_heads else 0)
    rope_theta = gguf.get_float(f"{p}.rope.freq_base", 10000.0)
    tokens = gguf.get_str_list("tokenizer.ggml.tokens")
    vocab_size = gguf.get_int(f"{p}.vocab_size") or (len(tokens) if tokens else None)
    if vocab_size is None:
        vocab_size = gguf.tensors["token_embd.weight"].shape[0] if "token_embd.weight" in gguf.tensors else 0
    eps = gguf.get_float(f"{p}.attention.layer_norm_rms_epsilon")
    if eps is None:
        raise gguf.error(f"metadata {p}.attention.layer_norm_rms_epsilon is missing")
    try:
        return ModelArchConfig(
            architecture=GGUF_ARCHITECTURES[gguf_arch],
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=_required_int(gguf, f"{p}.feed_forward_length"),
            num_hidden_layers=_required_int(gguf, f"{p}.block_count"),
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            head_dim=head_dim,
            rms_norm_eps=eps,
            rope_theta=rope_theta,
            max_position_embeddings=_required_int(gguf, f"{p}.context_length"),
            tie_word_embeddings="output.weight" not in gguf.tensors,
            attention_bias="blk.0.attn_q.bias" in gguf.tensors,
            rope_scaling=_rope_scaling(gguf, p, rope_theta, head_dim, rope_freqs),
        )
    except ValueError as exc:
        raise ModelLoadError(gguf.path, f"invalid hyperparameters: {exc}") from exc
