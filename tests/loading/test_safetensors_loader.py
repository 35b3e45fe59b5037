"""Hugging Face directories load like transformers loads them; bad ones are refused clearly."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from servewise.errors import ModelLoadError
from servewise.loading import load_checkpoint
from tests.factories import EOS_ID, IM_END_ID, write_tiny_hf_checkpoint


def _transformers_state_dict(directory: Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype).state_dict()


@pytest.mark.parametrize("architecture, shards, tied", [
    ("llama", 1, False), ("llama", 3, False), ("mistral", 1, False), ("mistral", 3, True),
    ("qwen2", 1, False), ("qwen2", 3, True),
])
def test_tensors_equal_what_transformers_loads(tmp_path: Path, architecture: str, shards: int, tied: bool) -> None:
    directory = write_tiny_hf_checkpoint(tmp_path / "m", architecture=architecture, shards=shards,
                                         tie_word_embeddings=tied, seed=shards)
    checkpoint = load_checkpoint(str(directory))
    reference = _transformers_state_dict(directory)
    if tied:  # transformers shares one tensor; we give it once, as the embedding
        assert reference["lm_head.weight"].data_ptr() == reference["model.embed_tokens.weight"].data_ptr()
        del reference["lm_head.weight"]
    assert set(checkpoint.tensors) == set(reference)
    for name, tensor in checkpoint.tensors.items():
        assert tensor.dtype == torch.float32 and tensor.is_contiguous()
        assert torch.equal(tensor, reference[name]), name
    assert checkpoint.format == "safetensors" and checkpoint.model_name == "m" and checkpoint.quantized == {}
    assert checkpoint.arch.architecture == architecture and checkpoint.arch.tie_word_embeddings == tied
    assert checkpoint.arch.attention_bias == (architecture == "qwen2")


def test_bf16_weights_are_converted(tmp_path: Path) -> None:
    directory = write_tiny_hf_checkpoint(tmp_path / "m", dtype=torch.bfloat16)
    as_float32 = load_checkpoint(str(directory))
    reference = _transformers_state_dict(directory, torch.float32)
    assert all(torch.equal(t, reference[n]) for n, t in as_float32.tensors.items())
    as_bf16 = load_checkpoint(str(directory), dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 and torch.equal(t.float(), reference[n]) for n, t in as_bf16.tensors.items())


def test_special_ids_and_generation_config(tmp_path: Path) -> None:
    directory = write_tiny_hf_checkpoint(tmp_path / "m")
    arch = load_checkpoint(str(directory)).arch
    assert arch.bos_token_id == 0 and arch.eos_token_ids == (EOS_ID, IM_END_ID)
    (directory / "generation_config.json").unlink()
    arch = load_checkpoint(str(directory)).arch
    assert arch.eos_token_ids == (EOS_ID, IM_END_ID)  # config.json's </s>, then the tokenizer's <|im_end|>


def _edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_rope_parameters_of_recent_configs(tmp_path: Path) -> None:
    directory = write_tiny_hf_checkpoint(tmp_path / "m")
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 256}
    _edit_config(directory, rope_theta=None, rope_scaling=None, rope_parameters={"rope_theta": 500000.0, **llama3})
    arch = load_checkpoint(str(directory)).arch
    assert arch.rope_theta == 500000.0 and arch.rope_scaling == llama3
    _edit_config(directory, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    arch = load_checkpoint(str(directory)).arch
    assert arch.rope_theta == 1e6 and arch.rope_scaling is None


def test_legacy_rope_scaling(tmp_path: Path) -> None:
    scaling = {"type": "linear", "factor": 2.0}
    directory = write_tiny_hf_checkpoint(tmp_path / "m", rope_scaling=scaling)
    assert load_checkpoint(str(directory)).arch.rope_scaling == scaling


def test_mistral_sliding_window_caps_the_context(tmp_path: Path) -> None:
    directory = write_tiny_hf_checkpoint(tmp_path / "m", architecture="mistral", max_position_embeddings=512)
    _edit_config(directory, sliding_window=128)
    assert load_checkpoint(str(directory)).arch.max_position_embeddings == 128


class _Bomb:
    """Unpickling this would create a marker file; the loader must never get there."""

    marker = ""

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def _write_pickle(path: Path, marker: Path) -> None:
    bomb = _Bomb()
    bomb.marker = str(marker)
    path.write_bytes(pickle.dumps(bomb))


def test_pickled_checkpoints_are_refused_unopened(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    directory = write_tiny_hf_checkpoint(tmp_path / "m")
    (directory / "model.safetensors").unlink()
    _write_pickle(directory / "pytorch_model.bin", marker)
    for path in (directory, directory / "pytorch_model.bin"):
        with pytest.raises(ModelLoadError, match="pickled PyTorch checkpoints are refused.*safetensors"):
            load_checkpoint(str(path))
    for suffix in (".pt", ".pth"):
        _write_pickle(tmp_path / f"model{suffix}", marker)
        with pytest.raises(ModelLoadError, match="pickled"):
            load_checkpoint(str(tmp_path / f"model{suffix}"))
    bare = tmp_path / "bare"
    bare.mkdir()
    _write_pickle(bare / "weights.pt", marker)
    with pytest.raises(ModelLoadError, match="pickled"):
        load_checkpoint(str(bare))
    assert not marker.exists()


def _truncate(path: Path, keep_bytes: int) -> None:
    path.write_bytes(path.read_bytes()[:keep_bytes])


def _rewrite_without(path: Path, name: str) -> None:
    tensors = load_file(str(path))
    del tensors[name]
    save_file(tensors, str(path), metadata={"format": "pt"})


def _bad_dirs(tmp_path: Path) -> list[tuple[str, Path, str]]:
    cases = []

    def case(label: str, fragment: str, **kwargs: object) -> Path:
        directory = write_tiny_hf_checkpoint(tmp_path / label, **kwargs)  # type: ignore[arg-type]
        cases.append((label, directory, fragment))
        return directory

    _truncate(case("truncated", "corrupt or truncated safetensors") / "model.safetensors", 5000)
    _truncate(case("header_only", "corrupt or truncated safetensors") / "model.safetensors", 20)
    (case("bad_json", "config.json: invalid JSON") / "config.json").write_text("{not json")
    _edit_config(case("no_hidden", "missing field hidden_size"), hidden_size=None)
    _edit_config(case("typed", "field num_hidden_layers must be int"), num_hidden_layers="2")
    _edit_config(case("gpt2", "unknown architecture 'gpt2'; supported: llama, mistral, qwen2"),
                 model_type="gpt2", architectures=["GPT2LMHeadModel"])
    _edit_config(case("shape", "has shape (128, 64), expected (96, 64)"), intermediate_size=96)
    _edit_config(case("vocab", "the tokenizer has 384 tokens but the model only 300"), vocab_size=300)
    _rewrite_without(case("missing", "missing tensors: model.layers.1.mlp.up_proj.weight") / "model.safetensors",
                     "model.layers.1.mlp.up_proj.weight")
    (case("shard_gone", "shard listed in the index does not exist", shards=2)
     / "model-00002-of-00002.safetensors").unlink()
    traversal = case("traversal", "not a file in the model directory", shards=2)
    index = json.loads((traversal / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "../../etc/passwd"
    (traversal / "model.safetensors.index.json").write_text(json.dumps(index))
    (case("no_tokenizer", "no tokenizer.json") / "tokenizer.json").unlink()
    (case("bad_tokenizer", "tokenizer.json: invalid tokenizer") / "tokenizer.json").write_text('{"model": 3}')
    ints = case("int_weights", "expected floating point weights")
    tensors = load_file(str(ints / "model.safetensors"))
    tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.int32)
    save_file(tensors, str(ints / "model.safetensors"))
    return cases


def test_bad_directories_are_refused(tmp_path: Path) -> None:
    for label, directory, fragment in _bad_dirs(tmp_path):
        with pytest.raises(ModelLoadError) as info:
            load_checkpoint(str(directory))
        message = str(info.value)
        assert fragment in message and str(directory) in message, (label, message)


def test_paths_that_are_not_models(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file or directory"):
        load_checkpoint(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_checkpoint(str(empty))
    directory = write_tiny_hf_checkpoint(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="pass the model directory"):
        load_checkpoint(str(directory / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="not a GGUF file or a Hugging Face model directory"):
        load_checkpoint(str(directory / "config.json"))
    gguf_dir = tmp_path / "g"
    gguf_dir.mkdir()
    (gguf_dir / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="pass the file itself"):
        load_checkpoint(str(gguf_dir))
    assert os.path.isdir(directory)
