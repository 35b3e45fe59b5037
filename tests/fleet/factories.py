"""Small builders for the fleet's pure logic: replica stats and routed requests."""

from __future__ import annotations

from collections.abc import Sequence

from servewise.engine.kv_cache_manager import chain_hashes
from servewise.fleet.stats import ReplicaStats, RouteInfo
from servewise.slo import StepCost

BLOCK = 16
COST = StepCost(step_overhead_s=0.01, prefill_s_per_token=0.001, decode_s_per_token=0.002)


def stats(replica_id: str, *, queued: int = 0, running: int = 0, pending: dict[str, int] | None = None,
          cost: StepCost = COST, kv_blocks: int = 1000, accepting: bool = True,
          queued_by_priority: dict[int, int] | None = None) -> ReplicaStats:
    return ReplicaStats(replica_id=replica_id, cost=cost, max_num_batched_tokens=512, max_num_seqs=64,
                        priority_order=queued_by_priority is not None,
                        queued_prefill_tokens=queued_by_priority if queued_by_priority is not None else {0: queued},
                        pending={k: (0, n) for k, n in (pending or {}).items()}, num_running=running, num_waiting=0, kv_cache_usage=0.1,
                        num_kv_blocks=kv_blocks, block_size=BLOCK, recent_step_s=None, accepting=accepting)


def tokens(prefix: int, length: int, *, group: int = 0) -> list[int]:
    """A prompt of ``length`` tokens whose first ``prefix`` tokens are shared by its ``group``."""
    shared = [(group * 7919 + i) % 30000 + 1 for i in range(prefix)]
    own = [(hash((group, length, i)) % 30000) + 1 for i in range(length - prefix)]
    return shared + own


def route(key: str, prompt: Sequence[int], *, priority: int = 0, exclude: Sequence[str] = ()) -> RouteInfo:
    hashes = tuple(chain_hashes(prompt, BLOCK, 0, len(prompt) // BLOCK))
    return RouteInfo(key=key, num_prompt_tokens=len(prompt), block_hashes=hashes, priority=priority,
                     exclude=frozenset(exclude))
