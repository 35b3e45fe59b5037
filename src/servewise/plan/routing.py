"""Which replica a request goes to when the plan has more than one: the fleet's own rule.

The fleet's pure scoring (``servewise.fleet.routing``) ranks replicas by predicted TTFT with
admission's formula: each replica's queued prefill tokens ahead plus the part of this
request's prompt its prefix cache does not hold, at its fitted step cost, with its running
decodes; ties (within the router's tolerance) are broken at random, seeded. The fleet sheds
(429) when even the best replica misses the class's TTFT target × slack with a backlog to
wait out (``shed_message``); otherwise the best replica's own admission decides, and a
replica that refuses passes the request to the next one, as Ray does.

Here the router reads each replica's stats as of its last step end and knows its prefix
cache exactly. Not modelled: the fleet's publication period (its routers see stats up to
``routing_stats_period_s`` old and correct them from their own bookkeeping), its prefix
memory being an estimate of each cache, the ingress hop and output batching.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from servewise.config import SchedulerConfig
from servewise.engine.kv_cache_manager import KVCacheManager
from servewise.fleet.router_core import RouterConfig
from servewise.fleet.routing import Correction, ReplicaScore, rank, score, shed_message
from servewise.fleet.stats import ReplicaStats, RouteInfo
from servewise.slo import AdmissionController, QueueOrder, SLOClass

TIE_TOLERANCE_S = RouterConfig().tie_tolerance_s  # the fleet router's default


class RoutableReplica(Protocol):
    index: int
    admission: AdmissionController
    kv: KVCacheManager
    scheduler_config: SchedulerConfig
    published_running: int  # running sequences in the replica's last published stats
    published_waiting: int


def replica_stats(replica: RoutableReplica) -> ReplicaStats:
    """What the replica would publish to the fleet's routers now (``fleet.replica`` builds the same)."""
    config, admission, kv = replica.scheduler_config, replica.admission, replica.kv
    return ReplicaStats(
        replica_id=str(replica.index), cost=admission.cost_model.cost(),
        max_num_batched_tokens=config.max_num_batched_tokens, max_num_seqs=config.max_num_seqs,
        priority_order=admission.config.queue_order is QueueOrder.PRIORITY,
        queued_prefill_tokens=admission.tokens_by_priority(), pending={}, num_running=replica.published_running,
        num_waiting=replica.published_waiting, kv_cache_usage=kv.usage, num_kv_blocks=kv.num_blocks,
        block_size=kv.block_size, recent_step_s=admission.recent_step_s())


def rank_replicas(replicas: Sequence[RoutableReplica], prompt: Sequence[int], slo_class: SLOClass,
                  rng: random.Random) -> tuple[list[int], str | None]:
    """Replica indices to try in order (best first, ties shuffled), and why the fleet sheds the request
    (None: it goes to the first; its own admission may still refuse it, then to the next)."""
    route = RouteInfo(key="", num_prompt_tokens=len(prompt), block_hashes=(), priority=slo_class.priority)
    scores: list[ReplicaScore] = []
    for replica in replicas:
        cached_blocks = replica.kv.num_cached_prefix_tokens(prompt) // replica.kv.block_size
        scores.append(score(replica_stats(replica), route, Correction(), cached_blocks))
    ranked = rank(scores, rng, TIE_TOLERANCE_S)
    return [int(s.replica_id) for s in ranked], shed_message(ranked[0], slo_class)
