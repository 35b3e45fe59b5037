"""What a loader hands to the engine: `Checkpoint` and its raw `QuantizedTensor`s."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from servewise.config import ModelArchConfig
from servewise.loading.tokenizer import Tokenizer


@dataclass(frozen=True)
class QuantizedTensor:
    """The GGML blocks of one quantized weight, rows in Hugging Face order.

    `data[r]` holds the blocks of row r of the (out_features, in_features) weight, so that
    dequantizing it row by row gives `Checkpoint.tensors[name]` exactly.
    """

    ggml_type: str  # GGML type name: "Q4_0", "Q4_1", "Q8_0", "Q4_K", ...
    shape: tuple[int, int]  # logical (out_features, in_features), HF orientation
    data: np.ndarray = field(repr=False)  # uint8, (out_features, bytes_per_row); may be a read-only-file memmap


@dataclass
class Checkpoint:
    """A model's weights, hyperparameters and tokenizer, whatever the file format."""

    path: str  # resolved .gguf file or model directory
    format: str  # "gguf" | "safetensors"
    model_name: str  # display name: the GGUF file stem, or the directory name
    arch: ModelArchConfig  # hyperparameters, bos/eos ids filled in
    # HF parameter name -> weight in the requested dtype, contiguous, on CPU. No lm_head.weight
    # when arch.tie_word_embeddings (the model reuses model.embed_tokens.weight).
    tensors: dict[str, torch.Tensor] = field(repr=False)
    # Same names, only for weights stored quantized in a GGUF (empty for safetensors).
    quantized: dict[str, QuantizedTensor] = field(repr=False)
    tokenizer: Tokenizer = field(repr=False)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())
