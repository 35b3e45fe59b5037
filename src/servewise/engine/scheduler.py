"""Iteration-level continuous batching.

There is no prefill or decode phase: each request has ``num_computed_tokens`` and
``num_tokens``, and a step closes part of that gap under a token budget. Chunked
prefill, prefix caching, preemption by recompute and decodes are one mechanism.

The budget of a step: every running decode first (its next token, plus the draft tokens
it verifies when speculating), then prompt chunks up to what the step-budget policy allows
next to those decodes (``slo/step_budget.py``: what keeps the step within the tightest
running TPOT target, or a fixed ``max_num_batched_tokens``). A draft never costs a
preemption: it is dropped first when the KV cache is short.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from servewise.config import SchedulerConfig
from servewise.engine.kv_cache_manager import KVCacheManager
from servewise.engine.queue_policy import create_queue
from servewise.engine.request import Request, RequestStatus
from servewise.slo.cost_model import StepCostModel
from servewise.slo.step_budget import StepBudgetPolicy, create_step_budget
from servewise.types import FinishReason


@dataclass
class ScheduledChunk:
    request: Request
    num_new_tokens: int  # computes positions [num_computed_tokens, num_computed_tokens + num_new_tokens)
    # Draft tokens after the request's last token that this step verifies (a decode only): the chunk
    # computes the last token and these, num_new_tokens == 1 + len(draft_token_ids).
    draft_token_ids: tuple[int, ...] = ()

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the request's last known token, so a new token is sampled."""
        r = self.request
        return r.num_computed_tokens + self.num_new_tokens - len(self.draft_token_ids) == r.num_tokens

    @property
    def token_ids(self) -> list[int]:
        """Input token ids of the positions it computes: the request's tokens, then the draft."""
        start = self.request.num_computed_tokens
        ids = self.request.token_ids[start:start + self.num_new_tokens]
        return ids + list(self.draft_token_ids) if self.draft_token_ids else ids


@dataclass
class ScheduleOutput:
    """Scheduler -> model runner: what one engine step computes."""

    chunks: list[ScheduledChunk] = field(default_factory=list)  # batch order; one per request
    num_batched_tokens: int = 0  # sum of num_new_tokens, ≤ max_num_batched_tokens
    preempted: list[Request] = field(default_factory=list)  # sent back to the waiting queue this step

    @property
    def is_empty(self) -> bool:
        return not self.chunks


@dataclass
class TokenBudget:
    """What one step may still compute: decode tokens are reserved up front, prompt tokens come after."""

    decode_tokens: int  # for running decodes (each its next token and its draft)
    prefill_tokens: int  # for prompt chunks (and recomputes after preemption)

    def chunk_for(self, request: Request) -> ScheduledChunk | None:
        if is_decoding(request):
            num_new = min(1 + len(request.draft_token_ids), self.decode_tokens)
            return ScheduledChunk(request, num_new, tuple(request.draft_token_ids[:num_new - 1])) if num_new else None
        num_new = min(request.num_tokens - request.num_computed_tokens, self.prefill_tokens)
        return ScheduledChunk(request, num_new) if num_new > 0 else None

    def spend(self, chunk: ScheduledChunk) -> None:
        if is_decoding(chunk.request):
            self.decode_tokens -= chunk.num_new_tokens
        else:
            self.prefill_tokens -= chunk.num_new_tokens


def is_decoding(request: Request) -> bool:
    """Everything but its last token is in the cache: the next step samples from it (1 token, + its draft)."""
    return request.num_tokens - request.num_computed_tokens == 1


class Scheduler:
    """Owns the waiting queue and the running list; called only from the engine loop thread."""

    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager,
                 clock: Callable[[], float] = time.monotonic, cost_model: StepCostModel | None = None) -> None:
        """clock: the time deadlines are compared with (the planner drives a simulated one).
        cost_model: the step cost the SLO budget is sized with; whoever runs the steps feeds it
        (the engine with its own steps, a planner with simulated ones). Default: the priors only."""
        self.config = config
        self.kv_cache = kv_cache
        self.cost_model = cost_model or StepCostModel()
        self.step_budget: StepBudgetPolicy = create_step_budget(config, self.cost_model)
        self.waiting = create_queue(config.queue_policy, clock)
        self.running: list[Request] = []
        self.num_preemptions = 0
        # group id -> its first completion, which siblings wait for to share its prompt blocks
        self._group_leaders: dict[str, Request] = {}

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def add_request(self, request: Request) -> None:
        if request.index == 0:
            self._group_leaders[request.group_id] = request
        self.waiting.push(request)

    def schedule(self) -> ScheduleOutput:
        out = ScheduleOutput()
        self.waiting.order_running(self.running)
        budget = self._plan_budget()
        i = 0
        while i < len(self.running):
            chunk = budget.chunk_for(self.running[i])
            if chunk is not None:
                if not self._reserve_blocks(chunk, out):
                    break  # it was preempted, so it was the last running request
                budget.spend(chunk)
                out.chunks.append(chunk)
            i += 1
        if not out.preempted:
            self._admit_waiting(out, budget)
        out.num_batched_tokens = sum(c.num_new_tokens for c in out.chunks)
        return out

    def _plan_budget(self) -> TokenBudget:
        """Decodes first; the prompt tokens the step-budget policy allows next to them."""
        decodes = [r for r in self.running if is_decoding(r)]
        num_decode_tokens = min(sum(1 + len(r.draft_token_ids) for r in decodes), self.config.max_num_batched_tokens)
        tightest_tpot_s = min((r.tpot_s for r in decodes if r.tpot_s is not None), default=None)
        prefill = self.step_budget.prefill_tokens(num_decode_tokens, tightest_tpot_s)
        return TokenBudget(num_decode_tokens,
                           min(prefill, self.config.max_num_batched_tokens - num_decode_tokens))

    def _reserve_blocks(self, chunk: ScheduledChunk, out: ScheduleOutput) -> bool:
        """Allocate the chunk's KV blocks, dropping its draft, then preempting the least urgent running
        requests, until they fit. False when ``chunk.request`` itself had to be preempted."""
        request = chunk.request
        while not self.kv_cache.can_allocate(request, chunk.num_new_tokens):
            if chunk.draft_token_ids:
                chunk.num_new_tokens -= len(chunk.draft_token_ids)
                chunk.draft_token_ids = ()
                continue
            victim = self.running[-1]  # the least urgent (the newest under FCFS)
            self._preempt(victim, out)
            if victim is request:
                return False
        self.kv_cache.allocate(request, chunk.num_new_tokens)
        return True

    def _admit_waiting(self, out: ScheduleOutput, budget: TokenBudget) -> None:
        for request in list(self.waiting):
            if len(self.running) >= self.config.max_num_seqs:
                budget.prefill_tokens += self._give_seat_to(request, out)
            if budget.prefill_tokens <= 0 or len(self.running) >= self.config.max_num_seqs:
                break
            leader = self._group_leaders.get(request.group_id)
            if leader is not None and leader is not request and not leader.is_finished:
                if leader.num_computed_tokens < leader.num_prompt_tokens:
                    continue  # wait until the leader's prompt is in the cache, then share it
                computed = self.kv_cache.shareable_blocks(leader, request)
            else:
                computed = self.kv_cache.find_cached_prefix(request)
            num_hit_tokens = len(computed) * self.kv_cache.block_size
            num_new = min(request.num_tokens - num_hit_tokens, budget.prefill_tokens)
            if not self.kv_cache.can_allocate(request, num_new, computed):
                break
            self.waiting.remove(request)
            self.kv_cache.allocate(request, num_new, computed)
            if request.timings.first_scheduled_s is None:
                request.num_cached_tokens = num_hit_tokens
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.chunks.append(ScheduledChunk(request, num_new))
            budget.prefill_tokens -= num_new

    def complete_chunk(self, chunk: ScheduledChunk, step_start_s: float, *, sampled: bool = False) -> None:
        """The runner computed ``chunk`` in a step that began at ``step_start_s``: its K/V are in
        the cache, and the blocks it filled can serve prefix hits from now on. ``sampled``: the
        step's tokens were appended to the request already (read ``chunk.samples`` before that);
        draft positions past the accepted ones were rejected and hold no valid K/V (they are
        overwritten later), and the newest token has none yet."""
        r = chunk.request
        if r.timings.first_scheduled_s is None:
            r.timings.first_scheduled_s = step_start_s
        computed = r.num_computed_tokens + chunk.num_new_tokens
        r.num_computed_tokens = min(computed, r.num_tokens - 1) if sampled else computed
        self.kv_cache.cache_full_blocks(r)

    def _give_seat_to(self, request: Request, out: ScheduleOutput) -> int:
        """A policy that allows it, every seat (max_num_seqs) taken: preempt the least urgent running
        request if its SLO class is strictly less urgent than ``request``'s, dropping the chunk it
        had this step. Returns the tokens that frees. Classes, not deadlines, decide, so a preempted
        request cannot take its seat back from the one that displaced it."""
        if not self.waiting.preempts_for_seats or not self.running:
            return 0
        victim = self.running[-1]  # order_running put the least urgent last
        if victim.priority <= request.priority:
            return 0
        freed = sum(c.num_new_tokens for c in out.chunks if c.request is victim)
        out.chunks = [c for c in out.chunks if c.request is not victim]
        self._preempt(victim, out)
        return freed

    def _preempt(self, request: Request, out: ScheduleOutput) -> None:
        self.running.remove(request)
        self.kv_cache.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.WAITING
        request.timings.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.push_front(request)
        out.preempted.append(request)

    def finish(self, request: Request, reason: FinishReason) -> None:
        """Stop a request wherever it is and free its blocks (idempotent)."""
        if request.is_finished:
            return
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self.kv_cache.free(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        if self._group_leaders.get(request.group_id) is request:
            del self._group_leaders[request.group_id]
