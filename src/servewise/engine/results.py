"""Folding streamed RequestOutput deltas into whole completions."""

from __future__ import annotations

from dataclasses import dataclass, field

from servewise.types import FinishReason, RequestOutput, RequestTimings, TokenLogprob


@dataclass
class Completion:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    token_times_s: list[float] = field(default_factory=list)  # monotonic emission time of each token


@dataclass
class GenerationResult:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[Completion]  # ordered by index
    num_prompt_tokens: int
    num_cached_tokens: int
    timings: RequestTimings | None
    error: str | None = None

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def num_output_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.outputs)


class ResultBuilder:
    """Accumulates the deltas of one request."""

    def __init__(self, request_id: str, n: int) -> None:
        self.result = GenerationResult(request_id, [], [Completion(i) for i in range(n)], 0, 0, None)

    def add(self, out: RequestOutput) -> None:
        res = self.result
        if out.prompt_token_ids is not None:
            res.prompt_token_ids = out.prompt_token_ids
        res.num_prompt_tokens = out.num_prompt_tokens
        res.num_cached_tokens = out.num_cached_tokens
        res.timings = out.timings
        res.error = out.error or res.error
        for delta in out.outputs:
            c = res.outputs[delta.index]
            c.text += delta.text
            c.token_ids.extend(delta.token_ids)
            c.token_times_s.extend(delta.token_times_s)
            if delta.logprobs is not None:
                c.logprobs = (c.logprobs or []) + delta.logprobs
            if delta.finish_reason is not None:
                c.finish_reason = delta.finish_reason
                c.stop_reason = delta.stop_reason
