"""The fleet router's state: replica stats, prefix memories and the requests in flight.

Pure bookkeeping around ``routing.py``'s scoring, with no Ray in it: the Ray Serve request
router (``ray_router.py``) and the ingress (``ingress.py``) of one process share one
instance. Ray runs its routers on their own event loop thread, so every method takes the lock.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from servewise.errors import OverloadedError
from servewise.fleet.routing import (
    Correction,
    PrefixMemory,
    ReplicaScore,
    RouteReason,
    rank,
    reason_for,
    retry_after_s,
    score,
    shed_message,
)
from servewise.fleet.stats import ReplicaStats, RouteInfo
from servewise.slo import AdmissionMode, MetricSample, PredictionErrorStats, SLOClass

PREFIX = "servewise:"


@dataclass(frozen=True)
class RouterConfig:
    max_prefix_blocks: int = 256  # leading prompt blocks hashed for affinity (4,096 tokens of 16)
    tie_tolerance_s: float = 0.005  # predictions this close to the best are a tie (random pick)
    admission_mode: AdmissionMode = AdmissionMode.ENFORCE  # OBSERVE: predict and count, never shed
    error_window: int = 1024  # TTFT predictions kept for the error statistics
    max_done_keys: int = 4096  # finished requests remembered, to discount them from stale publications

    def __post_init__(self) -> None:
        if self.max_prefix_blocks < 1 or self.tie_tolerance_s < 0 or self.error_window < 1:
            raise ValueError("max_prefix_blocks and error_window must be ≥ 1, tie_tolerance_s ≥ 0")


@dataclass
class _InFlight:
    replica_id: str
    num_prompt_tokens: int
    num_uncached_tokens: int  # estimated at routing
    predicted_ttft_s: float | None
    first_token_seen: bool = False


@dataclass
class _Replica:
    stats: ReplicaStats
    received_s: float  # router clock when these stats arrived
    memory: PrefixMemory


class FleetRouter:
    def __init__(self, config: RouterConfig | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or RouterConfig()
        self._rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()
        self._replicas: dict[str, _Replica] = {}
        self._in_flight: dict[str, _InFlight] = {}
        self._done: OrderedDict[str, None] = OrderedDict()  # recently finished keys, oldest first
        self.num_routed: Counter[tuple[str, str]] = Counter()  # (replica, reason)
        self.num_shed = 0
        self.num_would_shed = 0
        self.num_prompt_tokens = 0  # of requests past their first token
        self.num_estimated_cached_tokens = 0
        self.num_actual_cached_tokens = 0
        self.errors = PredictionErrorStats(self.config.error_window)

    # -- replica stats ------------------------------------------------------------------------
    def update_stats(self, stats: Iterable[ReplicaStats]) -> None:
        """The replicas' latest publications; a replica absent from ``stats`` is forgotten."""
        with self._lock:
            seen = set()
            for s in stats:
                seen.add(s.replica_id)
                current = self._replicas.get(s.replica_id)
                if current is None:
                    self._replicas[s.replica_id] = _Replica(s, self._clock(), PrefixMemory(s.num_kv_blocks))
                elif current.stats is not s and current.stats != s:
                    current.stats, current.received_s = s, self._clock()
                    current.memory.resize(s.num_kv_blocks)
            for gone in set(self._replicas) - seen:
                del self._replicas[gone]

    def remove_replica(self, replica_id: str) -> None:
        with self._lock:
            self._replicas.pop(replica_id, None)

    @property
    def replica_ids(self) -> list[str]:
        with self._lock:
            return list(self._replicas)

    def replica_stats(self) -> list[ReplicaStats]:
        with self._lock:
            return [r.stats for r in self._replicas.values()]

    # -- routing ------------------------------------------------------------------------------
    def rank(self, route: RouteInfo, candidates: Sequence[str] | None = None) -> list[ReplicaScore]:
        """Scores of the usable candidates (all known replicas by default), best first."""
        with self._lock:
            return self._rank(route, candidates)

    def _rank(self, route: RouteInfo, candidates: Sequence[str] | None) -> list[ReplicaScore]:
        ids = self._replicas.keys() if candidates is None else candidates
        scores = []
        for rid in ids:
            replica = self._replicas.get(rid)
            if replica is None or rid in route.exclude or not replica.stats.accepting:
                continue
            num_blocks = replica.memory.num_leading(route.block_hashes)
            scores.append(score(replica.stats, route, self._correction(replica, route.priority), num_blocks))
        return rank(scores, self._rng, self.config.tie_tolerance_s)

    def _correction(self, replica: _Replica, priority: int | None = None) -> Correction:
        """``priority``: only queued tokens a request of that priority waits behind (None: all)."""
        stats = replica.stats
        rid = stats.replica_id
        num, tokens = 0, 0
        for key, f in self._in_flight.items():
            if f.replica_id == rid and not f.first_token_seen and key not in stats.pending:
                num += 1
                tokens += f.num_uncached_tokens
        done = 0
        for key, (prio, queued) in stats.pending.items():
            if priority is not None and stats.priority_order and prio > priority:
                continue
            seen = self._in_flight.get(key)
            if key in self._done or (seen is not None and seen.first_token_seen):
                done += queued
        return Correction(num, tokens, done)

    def admit(self, route: RouteInfo, slo_class: SLOClass) -> ReplicaScore | None:
        """Fleet admission: the best replica's score, or OverloadedError (429) when even it would
        miss the class's target × slack with a backlog to wait out. None when no replica has
        published stats yet (the request then waits for Ray to route it)."""
        with self._lock:
            ranked = self._rank(route, None)
            if not ranked:
                return None
            best = ranked[0]
            why = shed_message(best, slo_class)
            if why is None:
                return best
            if self.config.admission_mode is AdmissionMode.OBSERVE:
                self.num_would_shed += 1
                return best
            self.num_shed += 1
        raise OverloadedError(why, retry_after_s=retry_after_s(best), reason="fleet_ttft_slo")

    def choose(self, route: RouteInfo, candidates: Sequence[str]) -> tuple[list[str], RouteReason]:
        """Candidates to try in order (Ray tries the next when one refuses), and why the first."""
        with self._lock:
            ranked = self._rank(route, candidates)
        if not ranked:  # no stats yet for any usable candidate: spread at random
            usable = [c for c in candidates if c not in route.exclude] or list(candidates)
            self._rng.shuffle(usable)
            return usable, RouteReason.NO_STATS
        order = [s.replica_id for s in ranked]
        order += [c for c in candidates if c not in order and c not in route.exclude]
        return order, reason_for(ranked, self.config.tie_tolerance_s, retry=bool(route.exclude))

    def on_routed(self, route: RouteInfo, replica_id: str, reason: RouteReason) -> None:
        """The request went to ``replica_id``: count it as unseen there until it shows up."""
        with self._lock:
            replica = self._replicas.get(replica_id)
            predicted, uncached = None, route.num_prompt_tokens
            if replica is not None:
                s = score(replica.stats, route, self._correction(replica, route.priority),
                          replica.memory.num_leading(route.block_hashes))
                predicted, uncached = s.ttft_s, route.num_prompt_tokens - s.num_cached_tokens
                replica.memory.add(route.block_hashes)
            self._in_flight[route.key] = _InFlight(replica_id, route.num_prompt_tokens, uncached, predicted)
            self.num_routed[(replica_id, reason.value)] += 1

    def on_first_token(self, key: str, ttft_s: float, num_cached_tokens: int) -> None:
        """Its prefill is done: score the prediction and the prefix estimate."""
        with self._lock:
            f = self._in_flight.get(key)
            if f is None or f.first_token_seen:
                return
            f.first_token_seen = True
            self.num_prompt_tokens += f.num_prompt_tokens
            self.num_estimated_cached_tokens += f.num_prompt_tokens - f.num_uncached_tokens
            self.num_actual_cached_tokens += num_cached_tokens
            if f.predicted_ttft_s is not None:
                self.errors.observe(f.predicted_ttft_s, ttft_s)

    def replica_of(self, key: str) -> str | None:
        """The replica a request in flight was routed to."""
        with self._lock:
            f = self._in_flight.get(key)
            return f.replica_id if f is not None else None

    def on_finished(self, key: str) -> None:
        with self._lock:
            if self._in_flight.pop(key, None) is not None:
                self._done[key] = None
                while len(self._done) > self.config.max_done_keys:
                    self._done.popitem(last=False)

    # -- reporting ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            replicas = {rid: {"stats_age_s": round(now - r.received_s, 3), "correction": asdict(self._correction(r)),
                              "prefix_memory_blocks": len(r.memory), "accepting": r.stats.accepting}
                        for rid, r in self._replicas.items()}
            return {"mode": self.config.admission_mode.value, "replicas": replicas,
                    "decisions": {"routed": sum(self.num_routed.values()), "shed": self.num_shed,
                                  "would_shed": self.num_would_shed},
                    "prefix_hit_ratio": self._hit_ratios(),
                    "prediction_error": asdict(self.errors.summary())}

    def _hit_ratios(self) -> dict[str, float | None]:
        total = self.num_prompt_tokens
        return {"estimated": self.num_estimated_cached_tokens / total if total else None,
                "actual": self.num_actual_cached_tokens / total if total else None}

    def metric_samples(self) -> Iterator[MetricSample]:
        with self._lock:
            routed = dict(self.num_routed)
            ratios = self._hit_ratios()
            now = self._clock()
            ages = {rid: now - r.received_s for rid, r in self._replicas.items()}
            unseen = {rid: self._correction(r).num_unseen_requests for rid, r in self._replicas.items()}
            errors = self.errors.summary()
            shed = self.num_shed
        for (replica, reason), count in routed.items():
            yield MetricSample(PREFIX + "router_requests_total", {"replica": replica, "reason": reason}, count)
        yield MetricSample(PREFIX + "requests_shed_total", {"reason": "fleet_ttft_slo"}, float(shed))
        for kind, ratio in ratios.items():
            if ratio is not None:
                yield MetricSample(PREFIX + "router_prefix_hit_ratio", {"kind": kind}, ratio)
        for stat, value in (("mean_abs", errors.mean_abs_error_s), ("mean_signed", errors.mean_signed_error_s),
                            ("p90_abs", errors.p90_abs_error_s)):
            if value is not None:
                yield MetricSample(PREFIX + "router_predicted_ttft_error_seconds", {"stat": stat}, value)
        for replica, age in ages.items():
            yield MetricSample(PREFIX + "router_replica_stats_age_seconds", {"replica": replica}, age)
            yield MetricSample(PREFIX + "router_unseen_requests", {"replica": replica}, float(unseen[replica]))


_ROUTERS: dict[str, FleetRouter] = {}
_ROUTERS_LOCK = threading.Lock()


def fleet_router(deployment: str, config: RouterConfig | None = None) -> FleetRouter:
    """This process's router state for ``deployment``, shared by Ray's request router and the
    ingress (the first caller's ``config`` wins)."""
    with _ROUTERS_LOCK:
        router = _ROUTERS.get(deployment)
        if router is None:
            router = _ROUTERS[deployment] = FleetRouter(config)
        return router
