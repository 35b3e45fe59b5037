"""Architecture name -> model class, and building a model from HF-named tensors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from functools import partial
from typing import Any

import torch
from torch import nn

from servewise.config import ModelArchConfig
from servewise.errors import ModelLoadError
from servewise.layers.quant_weights import RawBlocks, WeightPart
from servewise.models.llama import LlamaForCausalLM
from servewise.models.qwen2 import Qwen2ForCausalLM

MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = {
    "llama": LlamaForCausalLM,
    "mistral": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
}

# Our fused parameters and the Hugging Face tensors they are concatenated from (dim 0).
_FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


def _hf_sources(name: str) -> list[str]:
    """HF tensor names that make up our parameter ``name`` (e.g. layers.0.mlp.gate_up_proj.weight)."""
    if name == "lm_head.weight":
        return ["lm_head.weight"]
    module, _, leaf = name.rpartition(".")
    for fused, parts in _FUSED.items():
        if module.endswith(fused):
            prefix = module[: -len(fused)]
            return [f"model.{prefix}{part}.{leaf}" for part in parts]
    return [f"model.{name}"]


@contextlib.contextmanager
def _skip_weight_init() -> Iterator[None]:
    """Random init of parameters that are about to be replaced is waste; on the meta device,
    nn.Embedding's normal_ even imports torch._dynamo and sympy (~5 s, ~65 MB of RSS)."""
    names = ("normal_", "uniform_", "kaiming_uniform_")
    saved = {name: getattr(nn.init, name) for name in names}
    for name in names:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


class ModelWeights:
    """The checkpoint's tensors under the model's parameter names, for a transform that swaps
    layers before anything is loaded (layers/cpu_backend.py). Taken tensors leave the checkpoint."""

    def __init__(self, tensors: MutableMapping[str, torch.Tensor], quantized: Mapping[str, RawBlocks],
                 source: str) -> None:
        self._tensors, self._quantized, self._source = tensors, quantized, source

    def take_parts(self, name: str) -> list[WeightPart]:
        """The tensors stacked (dim 0) into parameter ``name``: the file's blocks when it has
        them, and a way to decode the values."""
        parts = []
        for hf_name in _hf_sources(name):
            if hf_name not in self._tensors:
                raise ModelLoadError(self._source, f"missing tensor {hf_name}")
            parts.append(WeightPart(self._quantized.get(hf_name), partial(self._tensors.__getitem__, hf_name)))
        return parts

    def take_float(self, name: str) -> torch.Tensor | None:
        sources = _hf_sources(name)
        if not all(s in self._tensors for s in sources):
            return None
        values = [self._tensors.pop(s).float() for s in sources]
        return values[0] if len(values) == 1 else torch.cat(values)

    def release(self, names: Iterable[str]) -> None:
        """Drop what the transform consumed (without decoding it)."""
        for name in names:
            for hf_name in _hf_sources(name):
                if hf_name in self._tensors:
                    del self._tensors[hf_name]


Transform = Callable[[nn.Module, ModelWeights], Any]


def build_model(arch: ModelArchConfig, tensors: MutableMapping[str, torch.Tensor], *, max_positions: int,
                device: torch.device, dtype: torch.dtype, use_native_kernels: bool,
                source: str = "<tensors>", quantized: Mapping[str, RawBlocks] | None = None,
                transform: Transform | None = None) -> LlamaForCausalLM:
    """Build the model on the meta device, then take the tensors (popped from ``tensors``).

    transform: runs on the meta model first and may swap layers for ones built from the
    checkpoint (e.g. quantized from ``quantized``, the file's raw blocks); only parameters
    still on the meta device are then loaded.
    """
    cls = MODEL_CLASSES.get(arch.architecture)
    if cls is None:
        raise ModelLoadError(source, f"no model implementation for architecture {arch.architecture!r}")
    with torch.device("meta"), _skip_weight_init():
        model = cls(arch, max_positions, use_native_kernels)
    if transform is not None:
        before = {name for name, _ in model.named_parameters()}
        weights = ModelWeights(tensors, quantized or {}, source)
        transform(model, weights)
        weights.release(before - {name for name, _ in model.named_parameters()})
    modules = dict(model.named_modules())
    for name, param in list(model.named_parameters()):
        if name == "lm_head.weight" and arch.tie_word_embeddings:
            continue
        sources = _hf_sources(name)
        missing = [s for s in sources if s not in tensors]
        if missing:
            raise ModelLoadError(source, f"missing tensor {missing[0]}")
        parts = [tensors.pop(s) for s in sources]
        value = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if tuple(value.shape) != tuple(param.shape):
            raise ModelLoadError(source, f"tensor for {name} has shape {tuple(value.shape)}, "
                                         f"expected {tuple(param.shape)} from the config")
        module_name, _, leaf = name.rpartition(".")
        setattr(modules[module_name], leaf,
                nn.Parameter(value.to(device=device, dtype=dtype).contiguous(), requires_grad=False))
    if arch.tie_word_embeddings and isinstance(model.lm_head, nn.Linear):
        model.lm_head.weight = model.embed_tokens.weight
    model.rotary.build_tables(device, dtype)
    return model.eval()
