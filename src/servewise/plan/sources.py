"""Where a plan's requests come from: the bench's sweep (same flags, same seeds) or a replay of a
measured run; and the rescaled requests of the capacity search."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from servewise.bench.schedule import LoadConfig, LoadMode, LoadPoint, sweep
from servewise.plan.workload import PointWorkload, RequestFactory

CAPACITY_REQUESTS = 400  # measured requests per evaluation of the capacity search
# `servewise plan validate` warms a fresh server up with this before measuring; the plan simulates it too
WARMUP_REQUESTS, WARMUP_CONCURRENCY, WARMUP_SEED_OFFSET = 8, 4, 1000
Warmup = tuple[PointWorkload, LoadConfig, LoadPoint]


def warmup_load(load: LoadConfig) -> LoadConfig:
    """The warm-up a validation sends a fresh server: a short closed loop of the same workload, other seed."""
    return LoadConfig(sweep(concurrencies=[WARMUP_CONCURRENCY]), num_requests=WARMUP_REQUESTS,
                      seed=load.seed + WARMUP_SEED_OFFSET)


class WorkloadSource(Protocol):
    load: LoadConfig  # the sweep: its points, amount, warm-up, seed

    def point(self, index: int, seed_offset: int) -> PointWorkload:
        """Point ``index``'s requests under seed ``load.seed + seed_offset``."""

    def at_rate(self, rate: float) -> tuple[PointWorkload, LoadConfig] | None:
        """Open-loop requests at ``rate`` for the capacity search; None if this source has none."""

    def warmup(self, seed_offset: int) -> Warmup | None:
        """What a fresh server serves before the sweep is measured; None: nothing known."""


def capacity_load(load: LoadConfig, rate: float) -> tuple[LoadConfig, LoadPoint]:
    """The load of one capacity-search evaluation: the sweep's shape, at least CAPACITY_REQUESTS requests."""
    point = LoadPoint(LoadMode.OPEN_LOOP, rate_per_s=rate)
    return dataclasses.replace(load, points=(point,), duration_s=None, warmup_s=0.0,
                               num_requests=max(load.num_requests or 0, CAPACITY_REQUESTS)), point


class SweepWorkloads:
    """The bench's requests of each point (cached per seed), and rescaled ones for the capacity search."""

    def __init__(self, factory: RequestFactory, load: LoadConfig) -> None:
        self.factory, self.load = factory, load
        self._cache: dict[tuple[int, int], PointWorkload] = {}
        self._unit: PointWorkload | None = None

    def point(self, index: int, seed_offset: int) -> PointWorkload:
        key = (index, seed_offset)
        if key not in self._cache:
            seeded = dataclasses.replace(self.load, seed=self.load.seed + seed_offset)
            self._cache[key] = self.factory.point(index, self.load.points[index], seeded)
        return self._cache[key]

    def warmup(self, seed_offset: int) -> Warmup | None:
        load = warmup_load(dataclasses.replace(self.load, seed=self.load.seed + seed_offset))
        key = (-1, seed_offset)
        if key not in self._cache:
            self._cache[key] = self.factory.point(0, load.points[0], load)
        return self._cache[key], load, load.points[0]

    def at_rate(self, rate: float) -> tuple[PointWorkload, LoadConfig] | None:
        """Point 0's prompts at ``rate``: the bench's gamma gaps scale exactly with 1 / rate."""
        load, _ = capacity_load(self.load, rate)
        if self._unit is None:
            unit_load, unit_point = capacity_load(self.load, 1.0)
            self._unit = self.factory.point(0, unit_point, unit_load)
        assert self._unit.arrivals_s is not None
        return PointWorkload(self._unit.requests, tuple(t / rate for t in self._unit.arrivals_s)), load


class ReplayWorkloads:
    """A measured run's requests at their measured send times; seeds do not change a trace."""

    def __init__(self, points: Sequence[tuple[LoadPoint, PointWorkload]], load: LoadConfig) -> None:
        self._points = [w for _, w in points]
        self.load = dataclasses.replace(load, points=tuple(p for p, _ in points))

    def point(self, index: int, seed_offset: int) -> PointWorkload:
        return self._points[index]

    def warmup(self, seed_offset: int) -> Warmup | None:
        return None  # the measured run's server state before it is unknown

    def at_rate(self, rate: float) -> tuple[PointWorkload, LoadConfig] | None:
        """The first point's trace, its send times compressed or stretched to ``rate``."""
        first = self.load.points[0]
        trace = self._points[0]
        if first.mode is not LoadMode.OPEN_LOOP or first.is_max_throughput or trace.arrivals_s is None:
            return None
        assert first.rate_per_s is not None
        factor = first.rate_per_s / rate
        point = LoadPoint(LoadMode.OPEN_LOOP, rate_per_s=rate)
        return (dataclasses.replace(trace, arrivals_s=tuple(t * factor for t in trace.arrivals_s)),
                dataclasses.replace(self.load, points=(point,)))
