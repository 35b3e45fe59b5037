"""Small factories for engine unit tests (no model needed)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch

from servewise.config import SchedulerConfig
from servewise.engine.kv_cache_manager import KVCacheManager
from servewise.engine.request import Request
from servewise.engine.results import ResultBuilder
from servewise.engine.scheduler import ScheduleOutput, Scheduler
from servewise.slo.cost_model import StepCostModel
from servewise.types import RequestTimings, SamplingParams

_ids = itertools.count()


def create_request(prompt: list[int] | int = 8, *, params: SamplingParams | None = None, index: int = 0,
                   group_id: str | None = None, priority: int = 0, eos: tuple[int, ...] = (0,),
                   max_total_tokens: int = 4096, seed: int = 0, tpot_s: float | None = None) -> Request:
    tokens = list(range(1, prompt + 1)) if isinstance(prompt, int) else list(prompt)
    gid = group_id or f"r{next(_ids)}"
    return Request(request_id=gid if group_id is None else f"{gid}#{index}", group_id=gid, index=index,
                   prompt_token_ids=tokens, params=params or SamplingParams(max_tokens=16),
                   timings=RequestTimings(arrival_s=time.monotonic()), eos_token_ids=frozenset(eos),
                   max_total_tokens=max_total_tokens, generator=torch.Generator().manual_seed(seed),
                   priority=priority, tpot_s=tpot_s)


def create_scheduler(*, num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 16,
                     max_num_batched_tokens: int = 64, prefix_caching: bool = True,
                     policy: str = "fcfs", cost_model: StepCostModel | None = None, **config: Any) -> Scheduler:
    kv = KVCacheManager(num_blocks, block_size, prefix_caching)
    return Scheduler(SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                                     queue_policy=policy, **config), kv, cost_model=cost_model)


def complete_step(scheduler: Scheduler, out: ScheduleOutput, next_token: int = 7) -> None:
    """What the engine does after a forward: advance computed tokens, append a token where sampled."""
    for chunk in out.chunks:
        r = chunk.request
        samples = chunk.samples
        scheduler.complete_chunk(chunk, 0.0)
        if samples:
            r.append_token(next_token)


def run(engine: Any, requests: dict[str, tuple[list[int], SamplingParams]]):
    builders = {}
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
        builders[rid] = ResultBuilder(rid, params.n)
    while engine.has_unfinished_requests:
        for out in engine.step():
            builders[out.request_id].add(out)
    return {rid: b.result for rid, b in builders.items()}


def prompt(engine: Any, text="hello world, this is a test"):
    return engine.tokenizer.encode(text)
