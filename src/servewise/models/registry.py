"""Architecture name -> model class, and building a model from HF-named tensors."""

from __future__ import annotations

import torch
from torch import nn

from servewise.config import ModelArchConfig
from servewise.errors import ModelLoadError
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


def build_model(arch: ModelArchConfig, tensors: dict[str, torch.Tensor], *, max_positions: int,
                device: torch.device, dtype: torch.dtype, use_native_kernels: bool,
                source: str = "<tensors>") -> LlamaForCausalLM:
    """Build the model on the meta device, then take the tensors (popped from ``tensors``)."""
    cls = MODEL_CLASSES.get(arch.architecture)
    if cls is None:
        raise ModelLoadError(source, f"no model implementation for architecture {arch.architecture!r}")
    with torch.device("meta"):
        model = cls(arch, max_positions, use_native_kernels)
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
    if arch.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.rotary.build_tables(device, dtype)
    return model.eval()
