"""Tiny GGUFs load with Hugging Face names, HF rotary layout and the exact dequantized values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from servewise.errors import ModelLoadError
from servewise.loading import load_checkpoint
from servewise.loading.gguf_file import read_gguf
from servewise.loading.weights import expected_shapes
from tests.factories import IM_END_ID, gguf_name, tiny_weights, write_tiny_gguf

TINY = dict(vocab_size=384, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)


def _reference(weights: dict[str, torch.Tensor], name: str, type_name: str) -> torch.Tensor:
    """What a GGML round trip of the HF weight gives (rows are quantized independently)."""
    value = weights[name].numpy()
    if type_name in ("F32",):
        return torch.from_numpy(value.copy())
    if type_name == "F16":
        return torch.from_numpy(value.astype(np.float16).astype(np.float32))
    qtype = GGMLQuantizationType[type_name]
    return torch.from_numpy(gguf_quants.dequantize(gguf_quants.quantize(value, qtype), qtype))


def _types_in_file(path: Path) -> dict[str, str]:
    return {name: info.ggml_type.name for name, info in read_gguf(str(path)).tensors.items()}


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_tensors_match_the_hf_weights_they_were_written_from(tmp_path: Path, architecture: str) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf", architecture=architecture)
    checkpoint = load_checkpoint(str(path))
    weights = tiny_weights(**TINY, attention_bias=architecture == "qwen2", tie_word_embeddings=False)
    types = _types_in_file(path)
    assert checkpoint.format == "gguf" and checkpoint.model_name == "tiny"  # the file stem
    assert set(checkpoint.tensors) == set(weights) == set(expected_shapes(checkpoint.arch))
    assert len(set(types.values())) == 6  # Q4_0, Q4_1, Q8_0, F16, F32, BF16 all present
    for name, tensor in checkpoint.tensors.items():
        assert tensor.dtype == torch.float32 and tensor.is_contiguous()
        assert torch.equal(tensor, _reference(weights, name, types[gguf_name(name)])), name


def test_quantized_blocks_dequantize_to_the_tensors(tmp_path: Path) -> None:
    checkpoint = load_checkpoint(str(write_tiny_gguf(tmp_path / "tiny.gguf")))
    assert {q.ggml_type for q in checkpoint.quantized.values()} == {"Q4_0", "Q4_1", "Q8_0"}
    assert any(".q_proj." in n for n in checkpoint.quantized) and any(".k_proj." in n for n in checkpoint.quantized)
    for name, quantized in checkpoint.quantized.items():
        assert quantized.shape == tuple(checkpoint.tensors[name].shape)
        assert quantized.data.dtype == np.uint8 and quantized.data.shape[0] == quantized.shape[0]
        rows = gguf_quants.dequantize(np.asarray(quantized.data), GGMLQuantizationType[quantized.ggml_type])
        assert torch.equal(torch.from_numpy(rows), checkpoint.tensors[name]), name


def test_hyperparameters_and_special_tokens(tmp_path: Path) -> None:
    checkpoint = load_checkpoint(str(write_tiny_gguf(tmp_path / "tiny.gguf", tie_word_embeddings=True)))
    arch = checkpoint.arch
    assert (arch.architecture, arch.vocab_size, arch.hidden_size, arch.num_hidden_layers) == ("llama", 384, 64, 2)
    assert (arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim) == (4, 2, 16)
    assert arch.max_position_embeddings == 512 and arch.rope_theta == 10000.0 and arch.rope_scaling is None
    assert arch.tie_word_embeddings and "lm_head.weight" not in checkpoint.tensors
    assert arch.bos_token_id == 0 and IM_END_ID in arch.eos_token_ids
    assert checkpoint.tokenizer.eos_token_ids == arch.eos_token_ids


def test_dtype_is_applied(tmp_path: Path) -> None:
    checkpoint = load_checkpoint(str(write_tiny_gguf(tmp_path / "tiny.gguf")), dtype=torch.bfloat16)
    assert {t.dtype for t in checkpoint.tensors.values()} == {torch.bfloat16}


def _hf_llama3_divisors(params: dict[str, float], theta: float, head_dim: int) -> np.ndarray:
    """transformers' own llama3 inv_freq, as divisors of the plain one (what rope_freqs stores)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=head_dim,
                         rope_parameters={"rope_type": "llama3", "rope_theta": theta, **params})
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    return (plain / scaled).numpy()


def test_llama3_rope_scaling_is_recovered_from_rope_freqs(tmp_path: Path) -> None:
    params = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 16.0, "original_max_position_embeddings": 2048}
    path = write_tiny_gguf(tmp_path / "tiny.gguf", rope_freqs=_hf_llama3_divisors(params, 10000.0, 16))
    assert load_checkpoint(str(path)).arch.rope_scaling == {"rope_type": "llama3", **params}


def test_llama3_with_a_narrow_band_uses_the_original_context_key(tmp_path: Path) -> None:
    params = {"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256}
    path = write_tiny_gguf(tmp_path / "tiny.gguf", rope_freqs=_hf_llama3_divisors(params, 10000.0, 16),
                           metadata={"llama.rope.scaling.original_context_length": 256})
    assert load_checkpoint(str(path)).arch.rope_scaling == {"rope_type": "llama3", **params}


def test_linear_rope_scaling_from_metadata(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf", metadata={"llama.rope.scaling.type": "linear",
                                                            "llama.rope.scaling.factor": 4.0})
    assert load_checkpoint(str(path)).arch.rope_scaling == {"rope_type": "linear", "factor": 4.0}


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(metadata={"llama.feed_forward_length": 96}), "blk.0.ffn_gate.weight has shape (128, 64), expected (96, 64)"),
    (dict(metadata={"llama.vocab_size": 400}), "has shape (384, 64), expected (400, 64)"),
    (dict(metadata={"llama.block_count": 1}), "unexpected tensors"),
    (dict(metadata={"llama.embedding_length": None}), "llama.embedding_length is missing"),
    (dict(metadata={"llama.block_count": "two"}), "must be an integer"),
    (dict(metadata={"llama.expert_count": 8}), "mixture-of-experts"),
    (dict(metadata={"llama.rope.scaling.type": "yarn"}), "unsupported rope scaling type 'yarn'"),
    (dict(drop_tensors=["blk.1.ffn_up.weight"]), "missing tensors: model.layers.1.mlp.up_proj.weight"),
    (dict(architecture="falcon"), "unknown architecture 'falcon'; supported: llama, mistral, qwen2"),
    (dict(metadata={"tokenizer.ggml.model": "bert"}), "unsupported tokenizer model 'bert'"),
    (dict(metadata={"tokenizer.ggml.pre": "made-up"}), "unsupported pre-tokenizer 'made-up'"),
    (dict(metadata={"tokenizer.ggml.eos_token_id": 100000}), "is not a token id"),
    (dict(rope_freqs=np.linspace(1, 3, 8)), "does not match llama3 rope scaling"),
    (dict(metadata={"split.count": 3}), "split into 3 files"),
])
def test_inconsistent_files_are_refused(tmp_path: Path, kwargs: dict, fragment: str) -> None:
    path = write_tiny_gguf(tmp_path / "bad.gguf", **kwargs)
    with pytest.raises(ModelLoadError) as info:
        load_checkpoint(str(path))
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_unpermutation_inverts_llama_cpp_permute() -> None:
    from servewise.loading.gguf_loader import unpermute_rows
    from tests.factories import _llama_permute

    for num_heads, head_dim in ((4, 16), (3, 64), (1, 8)):
        weight = np.arange(num_heads * head_dim * 2, dtype=np.float32).reshape(num_heads * head_dim, 2)
        assert np.array_equal(_llama_permute(weight, num_heads)[unpermute_rows(len(weight), num_heads)], weight)
