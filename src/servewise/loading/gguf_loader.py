"""Load a GGUF file into a `Checkpoint`: HF names, HF rotary layout, dequantized weights."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES

from servewise.config import ModelArchConfig
from servewise.loading.checkpoint import Checkpoint, LazyTensors, QuantizedTensor
from servewise.loading.dequant import FLOAT_TYPES, dequantize
from servewise.loading.gguf_config import (
    PERMUTED_QK_ARCHITECTURES,
    ROPE_FREQS_TENSOR,
    arch_config_from_gguf,
    hf_tensor_name,
)
from servewise.loading.gguf_file import GGUFFile, GGUFTensorInfo, read_gguf
from servewise.loading.gguf_tokenizer import tokenizer_from_gguf
from servewise.loading.weights import check_shapes


def unpermute_rows(num_rows: int, num_heads: int) -> np.ndarray:
    """Row order undoing llama.cpp's Q/K permutation: hf[r] = gguf[index[r]].

    llama.cpp's converter interleaves each head's two rotary halves (row j*half + i of a head
    becomes row 2*i + j) for its GPT-J-style rope; Hugging Face rotates halves (rotate_half).
    """
    half = num_rows // num_heads // 2
    return np.arange(num_rows).reshape(num_heads, half, 2).swapaxes(1, 2).reshape(-1)


def _row_order(hf_name: str, arch: ModelArchConfig) -> np.ndarray | None:
    if arch.architecture not in PERMUTED_QK_ARCHITECTURES:
        return None
    if ".self_attn.q_proj." in hf_name:
        return unpermute_rows(arch.num_attention_heads * arch.head_dim, arch.num_attention_heads)
    if ".self_attn.k_proj." in hf_name:
        return unpermute_rows(arch.num_key_value_heads * arch.head_dim, arch.num_key_value_heads)
    return None


def _raw_rows(gguf: GGUFFile, info: GGUFTensorInfo, row_order: np.ndarray | None) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[info.ggml_type]
    bytes_per_row = info.dims[0] // block_size * type_size
    rows = gguf.tensor_bytes(info).reshape(-1, bytes_per_row)
    # Rows are whole blocks, so reordering raw rows is exact (and cheaper than after decoding).
    return rows if row_order is None else rows[row_order]


def _hf_names(gguf: GGUFFile) -> dict[str, str]:
    names = {}
    for gguf_name in gguf.tensors:
        if gguf_name == ROPE_FREQS_TENSOR:
            continue
        hf_name = hf_tensor_name(gguf_name)
        if hf_name is None:
            raise gguf.error(f"unexpected tensor {gguf_name!r}: not part of a supported llama/qwen2 model")
        names[hf_name] = gguf_name
    return names


def _rope_freqs(gguf: GGUFFile) -> np.ndarray | None:
    info = gguf.tensors.get(ROPE_FREQS_TENSOR)
    if info is None:
        return None
    if len(info.dims) != 1 or info.ggml_type not in FLOAT_TYPES:
        raise gguf.error(f"{ROPE_FREQS_TENSOR} must be a 1-D float tensor")
    return dequantize(gguf.tensor_bytes(info), info.ggml_type, info.shape).numpy()


def load_gguf(path: str, dtype: torch.dtype = torch.float32, *, weights: bool = True) -> Checkpoint:
    """Parse and validate a llama/mistral/qwen2 GGUF file; tensors are dequantized when read
    (``weights=False``: shapes and tokenizer only, no tensors)."""
    gguf = read_gguf(path)
    num_splits = gguf.get_int("split.count", 1)
    if num_splits > 1:
        raise gguf.error(f"part of a GGUF split into {num_splits} files, which is not supported; merge it first "
                         "(llama.cpp: llama-gguf-split --merge)")
    tokenizer = tokenizer_from_gguf(gguf)
    arch = arch_config_from_gguf(gguf, _rope_freqs(gguf))
    arch = replace(arch, bos_token_id=tokenizer.bos_token_id, eos_token_ids=tokenizer.eos_token_ids)
    if tokenizer.vocab_size > arch.vocab_size:
        raise gguf.error(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {arch.vocab_size}")
    names = _hf_names(gguf)
    check_shapes(path, {hf: gguf.tensors[g].shape for hf, g in names.items()}, arch, describe=names)
    decoders: dict[str, Callable[[], torch.Tensor]] = {}
    quantized: dict[str, QuantizedTensor] = {}
    for hf_name, gguf_name in names.items() if weights else ():
        info = gguf.tensors[gguf_name]
        raw = _raw_rows(gguf, info, _row_order(hf_name, arch))
        decoders[hf_name] = partial(dequantize, raw, info.ggml_type, info.shape, dtype)
        if info.ggml_type not in FLOAT_TYPES:
            rows, cols = info.shape
            quantized[hf_name] = QuantizedTensor(info.ggml_type.name, (rows, cols), raw)
    # The file name is what users see and type (general.name is often a training-run label).
    model_name = os.path.splitext(os.path.basename(path))[0]
    return Checkpoint(path=path, format="gguf", model_name=model_name, arch=arch, tensors=LazyTensors(decoders),
                      quantized=quantized, tokenizer=tokenizer)
