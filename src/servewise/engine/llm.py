"""Offline batch inference: ``LLM(model=...).generate(prompts, params)`` and ``.chat(messages, params)``."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from servewise.config import CacheConfig, DeviceConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from servewise.engine.llm_engine import LLMEngine
from servewise.engine.results import GenerationResult, ResultBuilder
from servewise.types import SamplingParams

Prompt = str | Sequence[int]
Message = dict[str, Any]


class LLM:
    """Runs the engine in the calling thread until every request of a call has finished.

    Keyword arguments override fields of the component configs by name, e.g.
    ``LLM(block_size=16, max_num_seqs=32, linear_backend="fp32")``.
    """

    def __init__(self, model: str | None = None, *, config: EngineConfig | None = None, **overrides: Any) -> None:
        config = config or EngineConfig(model=model)
        if model is not None:
            config = dataclasses.replace(config, model=model)
        self.engine = LLMEngine(_apply_overrides(config, overrides))
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | None = None
                 ) -> list[GenerationResult]:
        """Complete each prompt (text, or token ids); results come back in prompt order."""
        token_lists = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in _prompt_list(prompts)]
        return self._run(token_lists, params or SamplingParams())

    def chat(self, messages: Sequence[Message] | Sequence[Sequence[Message]],
             params: SamplingParams | None = None) -> list[GenerationResult]:
        """Render each conversation with the model's chat template, then generate."""
        if messages and isinstance(messages[0], dict):
            conversations: list[list[Message]] = [list(messages)]  # type: ignore[arg-type]
        else:
            conversations = [list(conv) for conv in messages]  # type: ignore[arg-type]
        texts = [self.tokenizer.apply_chat_template(conv, add_generation_prompt=True) for conv in conversations]
        token_lists = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        return self._run(token_lists, params or SamplingParams())

    def _run(self, token_lists: list[list[int]], params: SamplingParams) -> list[GenerationResult]:
        builders: dict[str, ResultBuilder] = {}
        for tokens in token_lists:
            request_id = f"offline-{next(self._ids)}"
            self.engine.add_request(request_id, tokens, params)
            builders[request_id] = ResultBuilder(request_id, params.n)
        pending = set(builders)
        while pending:
            for out in self.engine.step():
                if out.request_id in builders:
                    builders[out.request_id].add(out)
                    if out.finished:
                        pending.discard(out.request_id)
        return [b.result for b in builders.values()]


def _prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    items = list(prompts)
    if items and all(isinstance(x, int) for x in items):
        return [items]  # type: ignore[list-item]  # one prompt given as token ids
    return items  # type: ignore[return-value]


def _apply_overrides(config: EngineConfig, overrides: dict[str, Any]) -> EngineConfig:
    parts: dict[str, Any] = {"cache": config.cache, "scheduler": config.scheduler, "device": config.device,
                             "speculative": config.speculative}
    top: dict[str, Any] = {}
    for key, value in overrides.items():
        for part_name, cls in (("cache", CacheConfig), ("scheduler", SchedulerConfig), ("device", DeviceConfig),
                               ("speculative", SpeculativeConfig)):
            if key in {f.name for f in dataclasses.fields(cls)}:
                parts[part_name] = dataclasses.replace(parts[part_name], **{key: value})
                break
        else:
            if key not in {f.name for f in dataclasses.fields(EngineConfig)}:
                raise TypeError(f"unknown engine option {key!r}")
            top[key] = value
    return dataclasses.replace(config, **parts, **top)
