"""What a loader hands to the engine: `Checkpoint` and its raw `QuantizedTensor`s."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
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


class LazyTensors(MutableMapping[str, torch.Tensor]):
    """Name -> tensor, decoded from the file at each access and never kept: a model built from
    it holds its weights once (or, quantized, never decodes them at all)."""

    def __init__(self, decoders: dict[str, Callable[[], torch.Tensor]]) -> None:
        self._decoders = decoders

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._decoders[name]()

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self._decoders[name] = lambda: value

    def __delitem__(self, name: str) -> None:
        del self._decoders[name]

    def __contains__(self, name: object) -> bool:  # the Mapping default would decode the tensor
        return name in self._decoders

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoders)

    def __len__(self) -> int:
        return len(self._decoders)


@dataclass
class Checkpoint:
    """A model's weights, hyperparameters and tokenizer, whatever the file format."""

    path: str  # resolved .gguf file or model directory
    format: str  # "gguf" | "safetensors"
    model_name: str  # display name: the GGUF file stem, or the directory name
    arch: ModelArchConfig  # hyperparameters, bos/eos ids filled in
    # HF parameter name -> weight in the requested dtype, contiguous, on CPU. No lm_head.weight
    # when arch.tie_word_embeddings (the model reuses model.embed_tokens.weight). A GGUF's are
    # LazyTensors (decoded on access).
    tensors: MutableMapping[str, torch.Tensor] = field(repr=False)
    # Same names, only for weights stored quantized in a GGUF (empty for safetensors).
    quantized: dict[str, QuantizedTensor] = field(repr=False)
    tokenizer: Tokenizer = field(repr=False)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())
