"""The planner's decisions over simulated points: pass/fail, capacity, replicas, cost, frontier.

- A point meets the SLO when at least ``min_attainment`` of its measured requests met
  every target (the bench's attainment: shed and failed requests count as misses).
- Capacity: the highest open-loop rate that meets the SLO, by bisection on the rate
  (the bench's arrival times scale exactly with 1/rate under a fixed seed, so pass/fail
  is close to monotone in the rate); to ``rel_tol`` of the rate.
- Replicas for a target rate: the fewest N whose fleet meets the SLO at target ×
  (1 + headroom), starting from ⌈target × (1 + headroom) / capacity of one⌉ and
  checked by simulating the fleet (pooling can need fewer; routing imbalance more).
- Cost: price per replica-hour × replicas / output tokens per hour, per million.
- Pareto frontier: points no other point beats on every objective at once.

Not modelled: autoscaling (the fleet size is fixed during a point), price tiers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Evaluate = Callable[[float], bool]  # rate (req/s) -> does the point meet the SLO


def meets_slo(attainment: float | None, min_attainment: float) -> bool:
    return attainment is not None and attainment >= min_attainment


def max_rate_meeting(evaluate: Evaluate, start_rate: float, *, rel_tol: float = 0.02,
                     max_rate: float = 1e6) -> float:
    """Highest rate for which ``evaluate`` passes (0 if even ``rel_tol × start_rate`` fails)."""
    if not start_rate > 0:
        raise ValueError("the capacity search needs a positive start rate")
    lo, hi = 0.0, start_rate
    while evaluate(hi):
        lo, hi = hi, hi * 2
        if hi > max_rate:
            return lo
    floor = start_rate * rel_tol
    while hi - lo > rel_tol * max(lo, floor):
        mid = (lo + hi) / 2
        if evaluate(mid):
            lo = mid
        else:
            hi = mid
    return lo


def replicas_needed(fleet_meets: Callable[[int], bool], target_rate: float, rate_per_replica: float,
                    headroom: float, *, max_replicas: int = 1024) -> int | None:
    """Fewest replicas whose fleet meets the SLO at ``target_rate × (1 + headroom)``; None if even
    ``max_replicas`` would not (or one replica meets nothing)."""
    if rate_per_replica <= 0:
        return None
    n = max(1, math.ceil(target_rate * (1 + headroom) / rate_per_replica))
    if n > max_replicas:
        return None
    if fleet_meets(n):
        while n > 1 and fleet_meets(n - 1):
            n -= 1
        return n
    for more in range(n + 1, min(max_replicas, n + 8) + 1):
        if fleet_meets(more):
            return more
    return None


def cost_per_million_tokens(price_per_hour: float | None, replicas: int, output_tokens_per_s: float) -> float | None:
    """$ per 1M output tokens: price per replica-hour × replicas over the tokens they serve in an hour."""
    if price_per_hour is None or output_tokens_per_s <= 0:
        return None
    return price_per_hour * replicas / (output_tokens_per_s * 3600.0) * 1e6


def pareto_front(points: Sequence[Sequence[float | None]], maximize: Sequence[bool]) -> list[bool]:
    """For each point (one value per objective; None = worst), whether no other point is at least
    as good on every objective and better on one."""

    def key(values: Sequence[float | None]) -> list[float]:
        return [-math.inf if v is None else (v if up else -v)
                for v, up in zip(values, maximize, strict=True)]  # larger is better on every axis

    keyed = [key(p) for p in points]
    front = []
    for i, a in enumerate(keyed):
        dominated = any(all(x >= y for x, y in zip(b, a, strict=True)) and any(x > y for x, y in zip(b, a, strict=True))
                        for j, b in enumerate(keyed) if j != i)
        front.append(not dominated)
    return front


def closest_to_slo(attainments: Sequence[float | None], ttft_p99_s: Sequence[float | None]) -> int:
    """Index of the point closest to meeting the SLO: highest attainment, then lowest p99 TTFT."""
    if not attainments:
        raise ValueError("no points")
    return min(range(len(attainments)),
               key=lambda i: (-(attainments[i] or 0.0), math.inf if ttft_p99_s[i] is None else ttft_p99_s[i]))
