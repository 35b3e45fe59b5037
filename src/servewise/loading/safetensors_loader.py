"""Load a Hugging Face model directory (config.json + safetensors, one file or sharded).

Pickled checkpoints (pytorch_model.bin, *.pt, *.pth) are refused, never opened: unpickling
runs arbitrary code. The safetensors library checks each file's header (sizes, offsets, the
data covering the file) when it opens it, before any tensor is read.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from servewise.errors import ModelLoadError
from servewise.loading.checkpoint import Checkpoint
from servewise.loading.hf_config import arch_config_from_hf, read_json
from servewise.loading.hf_tokenizer import tokenizer_from_hf
from servewise.loading.weights import check_shapes

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Buffers some checkpoints carry that are recomputed by the model code.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def refuse_pickle(path: str) -> ModelLoadError:
    return ModelLoadError(path, "pickled PyTorch checkpoints are refused because loading them can run arbitrary "
                                "code; convert the model to safetensors (e.g. transformers' "
                                "save_pretrained(..., safe_serialization=True))")


def _shard_files(directory: str) -> dict[str, list[str]]:
    """Safetensors file -> tensor names the index puts there (empty list for a single file)."""
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index_path):
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(index_path, "missing or empty weight_map")
        shards: dict[str, list[str]] = {}
        for name, filename in weight_map.items():
            if not isinstance(filename, str) or os.path.basename(filename) != filename or filename in ("", ".", ".."):
                raise ModelLoadError(index_path, f"weight_map entry {name!r} names {filename!r}, not a file "
                                                 "in the model directory")
            shards.setdefault(os.path.join(directory, filename), []).append(name)
        return shards
    single = os.path.join(directory, SINGLE_FILE)
    if os.path.isfile(single):
        return {single: []}
    pickles = sorted(f for f in os.listdir(directory) if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise refuse_pickle(os.path.join(directory, pickles[0]))
    raise ModelLoadError(directory, f"no {SINGLE_FILE} or {INDEX_FILE} in the directory")


def _open_shards(stack: ExitStack, shards: dict[str, list[str]]) -> dict[str, tuple[str, Any]]:
    """Tensor name -> (path, open safetensors handle) of the file that holds it."""
    where: dict[str, tuple[str, Any]] = {}
    for path, indexed in shards.items():
        if not os.path.isfile(path):
            raise ModelLoadError(path, "shard listed in the index does not exist")
        try:
            handle = stack.enter_context(safe_open(path, framework="pt"))
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(path, f"corrupt or truncated safetensors file: {exc}") from exc
        names = list(handle.keys())
        present = set(names)
        missing = [n for n in indexed if n not in present]
        if missing:
            raise ModelLoadError(path, f"tensor {missing[0]} is listed in the index but not in this file")
        for name in names:
            if name in where:
                raise ModelLoadError(path, f"tensor {name} appears in more than one shard")
            where[name] = (path, handle)
    return where


def _read_tensor(path: str, handle: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    try:
        tensor: torch.Tensor = handle.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ModelLoadError(path, f"cannot read tensor {name}: {exc}") from exc
    if not tensor.is_floating_point():
        raise ModelLoadError(path, f"tensor {name} has dtype {tensor.dtype}; expected floating point weights")
    return tensor.to(dtype).contiguous()


def load_safetensors_dir(directory: str, dtype: torch.dtype = torch.float32, *, weights: bool = True) -> Checkpoint:
    """Load config, tokenizer and weights of a llama/mistral/qwen2 Hugging Face directory (``weights=False``:
    no tensors)."""
    arch = arch_config_from_hf(directory)
    tokenizer = tokenizer_from_hf(directory, arch.bos_token_id, list(arch.eos_token_ids))
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else arch.bos_token_id
    arch = replace(arch, bos_token_id=bos, eos_token_ids=tokenizer.eos_token_ids)
    if tokenizer.vocab_size > arch.vocab_size:
        raise ModelLoadError(directory, f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                                        f"{arch.vocab_size} (config.json vocab_size)")
    shards = _shard_files(directory)
    with ExitStack() as stack:
        where = _open_shards(stack, shards)
        names = [n for n in where if not n.endswith(_IGNORED_SUFFIXES)
                 and not (arch.tie_word_embeddings and n == "lm_head.weight")]
        check_shapes(directory, {n: tuple(where[n][1].get_slice(n).get_shape()) for n in names}, arch)
        tensors = {n: _read_tensor(*where[n], n, dtype) for n in names} if weights else {}
    return Checkpoint(path=directory, format="safetensors", model_name=os.path.basename(os.path.normpath(directory)),
                      arch=arch, tensors=tensors, quantized={}, tokenizer=tokenizer)
