"""Per-point summaries computed from raw request records.

Latency statistics cover successful requests only; throughput and goodput are
per second of the measured window (first measured send → last measured end).
Warm-up requests count toward nothing but the in-flight peak, which is a
property of the whole point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from servewise.bench.records import Outcome, RequestRecord
from servewise.bench.slo import SloSpec

PERCENTILES = (50, 90, 95, 99)
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2e")


@dataclass
class LatencyStats:
    """Distribution of one latency metric, in seconds; None everywhere when count is 0."""

    count: int  # samples (requests, or chunk gaps for ITL)
    mean_s: float | None = None
    p50_s: float | None = None
    p90_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencyStats:
        if not values:
            return cls(0)
        array = np.asarray(values, dtype=np.float64)
        p50, p90, p95, p99 = (float(x) for x in np.percentile(array, PERCENTILES))
        return cls(len(values), float(array.mean()), p50, p90, p95, p99, float(array.max()))

    def get(self, stat: str) -> float | None:
        """'mean', 'p50', ... 'max' → seconds."""
        value: float | None = getattr(self, f"{stat}_s")
        return value


@dataclass
class PointSummary:
    """The figures of one load point."""

    num_requests: int  # measured requests (warm-up excluded), whatever their outcome
    num_warmup_requests: int  # sent during warm-up, excluded from everything below but peak_in_flight
    outcomes: dict[str, int]  # measured requests per Outcome value; every outcome present
    num_shed_with_retry_after: int  # shed (429/503) answers that carried a Retry-After header
    num_lost: int  # accepted (200 headers) but never completed
    duration_s: float  # first measured send → last measured end
    request_throughput_per_s: float  # successful requests per second
    input_tokens_per_s: float  # prompt tokens of successful requests per second
    output_tokens_per_s: float  # output tokens of successful requests per second
    goodput_per_s: float | None  # successful requests meeting every SLO per second; None without SLOs
    slo_attainment_pct: float | None  # share of measured requests meeting every SLO; None without SLOs
    peak_in_flight: int  # most requests in flight at once, warm-up included
    send_lag_p99_s: float  # how late requests left against their schedule: large = client-bound
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2e: LatencyStats

    @property
    def num_ok(self) -> int:
        return self.outcomes.get(Outcome.OK.value, 0)

    @property
    def num_failed(self) -> int:
        return self.num_requests - self.num_ok

    def latency(self, metric: str) -> LatencyStats:
        stats: LatencyStats = getattr(self, metric)
        return stats

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PointSummary:
        values = dict(data)
        for metric in LATENCY_METRICS:
            values[metric] = LatencyStats(**values[metric])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def summarize(records: Sequence[RequestRecord], slo: SloSpec) -> PointSummary:
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.outcome is Outcome.OK]
    duration_s = _window_s(measured)
    per_s = 1.0 / duration_s if duration_s > 0 else 0.0
    outcomes = {o.value: 0 for o in Outcome}
    for r in measured:
        outcomes[r.outcome.value] += 1
    num_good = sum(1 for r in measured if slo.met_by(r))
    return PointSummary(
        num_requests=len(measured),
        num_warmup_requests=len(records) - len(measured),
        outcomes=outcomes,
        num_shed_with_retry_after=sum(1 for r in measured if r.outcome is Outcome.SHED and r.retry_after),
        num_lost=sum(1 for r in measured if r.lost),
        duration_s=duration_s,
        request_throughput_per_s=len(ok) * per_s,
        input_tokens_per_s=sum(r.num_input_tokens or 0 for r in ok) * per_s,
        output_tokens_per_s=sum(r.num_output_tokens for r in ok) * per_s,
        goodput_per_s=None if slo.is_empty else num_good * per_s,
        slo_attainment_pct=None if slo.is_empty or not measured else 100.0 * num_good / len(measured),
        peak_in_flight=peak_in_flight(records),
        send_lag_p99_s=_p99([max(0.0, r.send_s - r.scheduled_s) for r in measured]),
        ttft=LatencyStats.of([r.ttft_s for r in ok if r.ttft_s is not None]),
        tpot=LatencyStats.of([t for r in ok if (t := r.tpot_s) is not None]),
        itl=LatencyStats.of([gap for r in ok for gap in r.itls_s]),
        e2e=LatencyStats.of([r.e2e_s for r in ok if r.e2e_s is not None]),
    )


def peak_in_flight(records: Sequence[RequestRecord]) -> int:
    """Most requests between send and end at any instant."""
    return max(in_flight_timeline(records)[1], default=0)


def in_flight_timeline(records: Sequence[RequestRecord]) -> tuple[list[float], list[int]]:
    """(times, requests in flight just after each time): a step function over the point.

    At equal times an end sorts before a send, so back-to-back requests do not overlap.
    """
    events = sorted([(r.send_s, 1) for r in records] + [(r.end_s, -1) for r in records])
    times, counts, current = [], [], 0
    for at_s, step in events:
        current += step
        times.append(at_s)
        counts.append(current)
    return times, counts


def _window_s(measured: Sequence[RequestRecord]) -> float:
    if not measured:
        return 0.0
    return max(r.end_s for r in measured) - min(r.send_s for r in measured)


def _p99(values: Sequence[float]) -> float:
    return float(np.percentile(values, 99)) if values else 0.0
