"""Qwen2: the Llama decoder with biases on the q/k/v projections."""

from __future__ import annotations

import dataclasses

from servewise.config import ModelArchConfig
from servewise.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: ModelArchConfig, max_positions: int, use_native_kernels: bool = True) -> None:
        # Qwen2 checkpoints always carry q/k/v biases, whatever the config file says.
        super().__init__(dataclasses.replace(cfg, attention_bias=True), max_positions, use_native_kernels)
