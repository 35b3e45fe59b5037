"""Iteration-level continuous batching.

There is no prefill or decode phase: each request has ``num_computed_tokens`` and
``num_tokens``, and a step closes part of that gap under a token budget. Chunked
prefill, prefix caching, preemption by recompute and decodes are one mechanism.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from servewise.config import SchedulerConfig
from servewise.engine.kv_cache_manager import KVCacheManager
from servewise.engine.queue_policy import create_queue
from servewise.engine.request import Request, RequestStatus
from servewise.types import FinishReason


@dataclass
class ScheduledChunk:
    request: Request
    num_new_tokens: int  # computes positions [num_computed_tokens, num_computed_tokens + num_new_tokens)

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the request's last known token, so a new token is sampled."""
        return self.request.num_computed_tokens + self.num_new_tokens == self.request.num_tokens


@dataclass
class ScheduleOutput:
    """Scheduler -> model runner: what one engine step computes."""

    chunks: list[ScheduledChunk] = field(default_factory=list)  # batch order; one per request
    num_batched_tokens: int = 0  # sum of num_new_tokens, ≤ max_num_batched_tokens
    preempted: list[Request] = field(default_factory=list)  # sent back to the waiting queue this step

    @property
    def is_empty(self) -> bool:
        return not self.chunks


class Scheduler:
    """Owns the waiting queue and the running list; called only from the engine loop thread."""

    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.kv_cache = kv_cache
        # clock: the time deadlines are compared with; the planner drives a simulated one
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
        budget = self.config.max_num_batched_tokens
        self.waiting.order_running(self.running)
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self.kv_cache.can_allocate(request, num_new):
                victim = self.running[-1]  # the least urgent (the newest under FCFS)
                self._preempt(victim, out)
                if victim is request:
                    break
            else:
                self.kv_cache.allocate(request, num_new)
                out.chunks.append(ScheduledChunk(request, num_new))
                budget -= num_new
                i += 1
        if not out.preempted:
            budget = self._admit_waiting(out, budget)
        out.num_batched_tokens = self.config.max_num_batched_tokens - budget
        return out

    def _admit_waiting(self, out: ScheduleOutput, budget: int) -> int:
        for request in list(self.waiting):
            if len(self.running) >= self.config.max_num_seqs:
                budget += self._give_seat_to(request, out)
            if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
                break
            leader = self._group_leaders.get(request.group_id)
            if leader is not None and leader is not request and not leader.is_finished:
                if leader.num_computed_tokens < leader.num_prompt_tokens:
                    continue  # wait until the leader's prompt is in the cache, then share it
                computed = self.kv_cache.shareable_blocks(leader, request)
            else:
                computed = self.kv_cache.find_cached_prefix(request)
            num_hit_tokens = len(computed) * self.kv_cache.block_size
            num_new = min(request.num_tokens - num_hit_tokens, budget)
            if not self.kv_cache.can_allocate(request, num_new, computed):
                break
            self.waiting.remove(request)
            self.kv_cache.allocate(request, num_new, computed)
            if request.timings.first_scheduled_s is None:
                request.num_cached_tokens = num_hit_tokens
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.chunks.append(ScheduledChunk(request, num_new))
            budget -= num_new
        return budget

    def complete_chunk(self, chunk: ScheduledChunk, step_start_s: float) -> None:
        """The runner computed ``chunk`` in a step that began at ``step_start_s``: its K/V are in
        the cache, and the blocks it filled can serve prefix hits from now on. (Read
        ``chunk.samples`` before: it compares against the tokens computed so far.)"""
        r = chunk.request
        if r.timings.first_scheduled_s is None:
            r.timings.first_scheduled_s = step_start_s
        r.num_computed_tokens += chunk.num_new_tokens
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
