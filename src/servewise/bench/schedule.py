"""Load shapes: open-loop arrivals at a rate, closed-loop concurrency, and sweeps of either.

Open-loop inter-arrival times follow a gamma distribution with shape =
``burstiness`` and mean 1/rate: burstiness 1 is a Poisson process, below 1
arrivals come in bursts, above 1 they are more evenly spaced. Rate ``inf`` is
the max-throughput mode: every request at t = 0.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass
from typing import Any


class LoadMode(str, enum.Enum):
    OPEN_LOOP = "open-loop"  # arrivals at a rate, whatever the server's pace
    CLOSED_LOOP = "closed-loop"  # a fixed number of requests kept in flight


@dataclass(frozen=True)
class LoadPoint:
    """One point of a sweep."""

    mode: LoadMode
    rate_per_s: float | None = None  # open loop: mean arrivals per second; inf = all at once
    concurrency: int | None = None  # closed loop: requests kept in flight

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", LoadMode(self.mode))
        if self.mode is LoadMode.OPEN_LOOP:
            if self.rate_per_s is None or not self.rate_per_s > 0 or self.concurrency is not None:
                raise ValueError("an open-loop point needs a positive rate and no concurrency")
        elif self.concurrency is None or self.concurrency < 1 or self.rate_per_s is not None:
            raise ValueError("a closed-loop point needs a concurrency ≥ 1 and no rate")

    @property
    def is_max_throughput(self) -> bool:
        return self.rate_per_s is not None and math.isinf(self.rate_per_s)

    @property
    def label(self) -> str:
        if self.mode is LoadMode.CLOSED_LOOP:
            return f"concurrency={self.concurrency}"
        return "rate=inf" if self.is_max_throughput else f"rate={self.rate_per_s:g}/s"

    def to_dict(self) -> dict[str, Any]:
        rate = None if self.rate_per_s is None else ("inf" if self.is_max_throughput else self.rate_per_s)
        return {"mode": self.mode.value, "rate_per_s": rate, "concurrency": self.concurrency, "label": self.label}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadPoint:
        rate = data.get("rate_per_s")
        return cls(LoadMode(data["mode"]), None if rate is None else float(rate), data.get("concurrency"))


def sweep(*, rates: list[float] | None = None, concurrencies: list[int] | None = None) -> tuple[LoadPoint, ...]:
    """The points of a rate sweep or a concurrency sweep (exactly one of the two)."""
    if (rates is None) == (concurrencies is None):
        raise ValueError("give either rates or concurrencies")
    if rates is not None:
        return tuple(LoadPoint(LoadMode.OPEN_LOOP, rate_per_s=r) for r in rates)
    return tuple(LoadPoint(LoadMode.CLOSED_LOOP, concurrency=c) for c in concurrencies or ())


@dataclass(frozen=True)
class LoadConfig:
    """The sweep and how long each of its points lasts."""

    points: tuple[LoadPoint, ...]  # run in order, one after the other
    num_requests: int | None = 100  # measured requests per point (warm-up not included)
    duration_s: float | None = None  # instead: send for this long per point, after the warm-up
    warmup_requests: int = 0  # the first N requests of each point are warm-up
    warmup_s: float = 0.0  # requests sent in the first S seconds of each point are warm-up
    burstiness: float = 1.0  # gamma shape of open-loop gaps: 1 = Poisson, < 1 = burstier
    max_concurrency: int | None = None  # open loop: cap on requests in flight; None = no cap
    seed: int = 0  # fixes every schedule and every sampled prompt
    # Closed loop with no fixed request count: distinct prompts built, then reused in turn.
    prompt_pool_size: int = 1000

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a run needs at least one load point")
        if (self.num_requests is None) == (self.duration_s is None):
            raise ValueError("give either a number of requests or a duration per point")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError("number of requests must be ≥ 1")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError("duration must be positive")
        if self.warmup_requests < 0 or self.warmup_s < 0:
            raise ValueError("warm-up must be ≥ 0")
        if not self.burstiness > 0:
            raise ValueError("burstiness must be positive")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max concurrency must be ≥ 1")
        if self.prompt_pool_size < 1:
            raise ValueError("prompt pool size must be ≥ 1")
        if any(p.is_max_throughput for p in self.points) and (self.duration_s is not None or self.warmup_s):
            raise ValueError("max-throughput (rate inf) sends everything at once: give a number of requests "
                             "and a warm-up in requests, not in seconds")

    def is_warmup(self, index: int, at_s: float) -> bool:
        return index < self.warmup_requests or at_s < self.warmup_s


def arrival_times_s(rate_per_s: float, load: LoadConfig, rng: random.Random) -> list[float]:
    """Send times of an open-loop point, seconds after its start, warm-up included."""
    if math.isinf(rate_per_s):
        assert load.num_requests is not None  # LoadConfig rejects a duration with rate inf
        return [0.0] * (load.warmup_requests + load.num_requests)
    scale_s = 1.0 / (rate_per_s * load.burstiness)
    times: list[float] = []
    num_measured = 0
    at_s = 0.0
    while True:
        at_s += rng.gammavariate(load.burstiness, scale_s)
        if load.duration_s is not None and at_s >= load.warmup_s + load.duration_s:
            return times
        times.append(at_s)
        if not load.is_warmup(len(times) - 1, at_s):
            num_measured += 1
            if num_measured == load.num_requests:
                return times
