"""Counters and recent step timings the engine keeps about itself (read by metrics and admission)."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from servewise.engine.request import Request

RECENT_STEPS = 256


@dataclass(frozen=True)
class StepRecord:
    duration_s: float  # wall time of the forward pass + sampling
    num_tokens: int  # tokens computed in the step
    num_prefill_tokens: int  # of which prompt tokens (the rest are decodes / recompute of outputs)
    num_requests: int  # requests in the batch
    end_s: float = field(default_factory=time.monotonic)  # monotonic time the step ended


@dataclass
class EngineStats:
    """A snapshot; the engine thread owns the live instance and publishes copies."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0  # fraction of KV blocks held by requests
    num_free_blocks: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up
    prefix_cache_hits: int = 0  # prompt tokens found
    num_preemptions: int = 0
    num_prompt_tokens: int = 0  # accepted prompt tokens, cumulative
    num_generation_tokens: int = 0  # sampled tokens, cumulative
    num_steps: int = 0
    busy_s: float = 0.0  # total time spent in steps
    last_step_end_s: float | None = None  # monotonic
    num_drafts: int = 0  # speculative verifications (a sequence's draft checked in one step)
    num_draft_tokens: int = 0  # draft tokens proposed and verified, cumulative
    num_accepted_tokens: int = 0  # of which accepted
    finished_by_reason: Counter[str] = field(default_factory=Counter)
    recent_steps: deque[StepRecord] = field(default_factory=lambda: deque(maxlen=RECENT_STEPS))

    def record_step(self, step: StepRecord) -> None:
        self.num_steps += 1
        self.busy_s += step.duration_s
        self.last_step_end_s = step.end_s
        self.recent_steps.append(step)

    def record_draft(self, num_draft_tokens: int, num_accepted_tokens: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted_tokens

    @property
    def draft_acceptance_rate(self) -> float | None:
        """Accepted / proposed draft tokens since start; None before the first draft."""
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else None

    def record_finish(self, children: Iterable[Request]) -> None:
        for r in children:
            if r.finish_reason is not None:
                self.finished_by_reason[r.finish_reason.value] += 1

    def copy(self) -> EngineStats:
        return dataclasses.replace(self, finished_by_reason=Counter(self.finished_by_reason),
                                   recent_steps=deque(self.recent_steps, maxlen=RECENT_STEPS))
