"""Which replica serves a request: the one where its predicted TTFT is lowest.

Score of replica r for a request of P prompt tokens, with the admission formula
(``slo.admission.predict_ttft``) and r's own fitted step cost:

- ``cached_r``: tokens of the longest prefix of the prompt's block-hash chain that this
  router has sent to r before (``PrefixMemory``, LRU, bounded by r's KV pool), at most
  ``(P - 1) // block`` blocks, as the engine always computes the last prompt token;
- ``ahead_r``: prompt tokens r published as queued (classes at least as urgent under a
  priority queue), corrected for staleness both ways (``Correction``): + the uncached tokens
  of requests this router sent to r that r had not yet seen when it published, - the tokens
  r listed as queued for requests this router has since seen start or finish;
- ``running_r``: r's running requests + the unseen ones;
- ``ttft_r = predict_ttft(cost_r, budget_r, ahead_r, P - cached_r, running_r)``, with r's step
  budget rule (its published step target: prefill per step shrinks under decode load).

The lowest score wins; scores within ``tie_tolerance_s`` of it are a tie, broken at random
(so equal replicas share load instead of one taking a burst). A prefix-affine replica wins
while the prefill its cache saves outweighs its longer queue, and loses once it does not.

Fleet admission: shed (429) when even the best replica's prediction exceeds the class's TTFT
target × slack and there is a backlog to wait out there, as single-replica admission does.

Not modelled: eviction on the replica between publications (the memory is an estimate; the
replica's reported cached tokens show its error), decodes that start while the request
waits, a full running batch (``max_num_seqs``) holding it back, other routers' unseen requests.
"""

from __future__ import annotations

import enum
import math
import random
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from servewise.fleet.stats import ReplicaStats, RouteInfo
from servewise.slo import SLOClass, TTFTPrediction
from servewise.slo.admission import predict_ttft


class RouteReason(str, enum.Enum):
    """Why a replica was picked: the ``reason`` label of ``servewise:router_requests_total``."""

    PREFIX = "prefix_affinity"  # it held more of the prompt than any other and scored best
    LOAD = "least_ttft"  # it scored best on load alone
    TIE = "tie"  # several scored the same; picked at random
    RETRY = "retry"  # another replica shed or failed this request first
    NO_STATS = "no_stats"  # no usable stats (new replicas): random


@dataclass(frozen=True)
class Correction:
    """What a replica's last publication misses, as far as this router knows."""

    num_unseen_requests: int = 0  # sent to it after it published
    num_unseen_tokens: int = 0  # their uncached prompt tokens
    num_done_tokens: int = 0  # tokens it listed as queued for requests since past their first token


@dataclass(frozen=True)
class ReplicaScore:
    replica_id: str
    prediction: TTFTPrediction  # for this request on this replica, now
    num_cached_tokens: int  # estimated prefix-cache hit on this replica

    @property
    def ttft_s(self) -> float:
        return self.prediction.ttft_s


class PrefixMemory:
    """Block hashes a router sent to one replica, most recent last; bounded like its KV pool."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity_blocks = max(1, capacity_blocks)
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def num_leading(self, hashes: Sequence[bytes]) -> int:
        """How many of the leading hashes it holds (a chain: stop at the first miss)."""
        count = 0
        for block_hash in hashes:
            if block_hash not in self._blocks:
                break
            count += 1
        return count

    def add(self, hashes: Iterable[bytes]) -> None:
        for block_hash in hashes:
            self._blocks[block_hash] = None
            self._blocks.move_to_end(block_hash)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)

    def resize(self, capacity_blocks: int) -> None:
        self.capacity_blocks = max(1, capacity_blocks)
        self.add(())


def score(stats: ReplicaStats, route: RouteInfo, correction: Correction, num_cached_blocks: int) -> ReplicaScore:
    """Predicted TTFT of ``route`` on this replica (module docstring)."""
    usable_blocks = min(num_cached_blocks, max(route.num_prompt_tokens - 1, 0) // stats.block_size)
    cached = usable_blocks * stats.block_size
    queued = max(stats.queued_tokens_ahead(route.priority) - correction.num_done_tokens, 0)
    prediction = predict_ttft(stats.cost, stats.max_num_batched_tokens, queued + correction.num_unseen_tokens,
                              route.num_prompt_tokens - cached, stats.num_running + correction.num_unseen_requests,
                              step_target_s=stats.step_target_s)
    return ReplicaScore(stats.replica_id, prediction, cached)


def rank(scores: Sequence[ReplicaScore], rng: random.Random, tie_tolerance_s: float) -> list[ReplicaScore]:
    """Best first; the scores tied with the best come first in random order."""
    ordered = sorted(scores, key=lambda s: s.ttft_s)
    if not ordered:
        return ordered
    best = ordered[0].ttft_s
    num_tied = sum(1 for s in ordered if s.ttft_s - best <= tie_tolerance_s)
    tied = ordered[:num_tied]
    rng.shuffle(tied)
    return tied + ordered[num_tied:]


def reason_for(ranked: Sequence[ReplicaScore], tie_tolerance_s: float, retry: bool) -> RouteReason:
    """Why the first of ``ranked`` was picked."""
    if retry:
        return RouteReason.RETRY
    best = ranked[0]
    if len(ranked) > 1 and ranked[1].ttft_s - best.ttft_s <= tie_tolerance_s:
        return RouteReason.TIE
    if best.num_cached_tokens > 0 and best.num_cached_tokens >= max(s.num_cached_tokens for s in ranked):
        return RouteReason.PREFIX
    return RouteReason.LOAD


def shed_message(best: ReplicaScore, slo_class: SLOClass) -> str | None:
    """Why the fleet sheds a request whose best replica scores ``best``, or None to admit it.

    Only a request with a backlog ahead of it is shed (waiting would help it), as in admission."""
    if slo_class.ttft_s is None or best.prediction.num_prefill_tokens_ahead == 0:
        return None
    limit = slo_class.ttft_s * slo_class.admission_slack
    if best.ttft_s <= limit:
        return None
    return (f"fleet overloaded for SLO class {slo_class.name!r}: the best replica's predicted time to first "
            f"token is {best.ttft_s:.2f} s, over {limit:.2f} s (target {slo_class.ttft_s:g} s × slack "
            f"{slo_class.admission_slack:g}); retry after {math.ceil(retry_after_s(best))} s")


def retry_after_s(best: ReplicaScore, floor_s: float = 1.0) -> float:
    """Seconds until the best replica's backlog clears (≥ floor_s)."""
    return max(floor_s, best.prediction.queue_wait_s)
