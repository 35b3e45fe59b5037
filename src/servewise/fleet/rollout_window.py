"""What each version's requests did during a rollout step: the gate's input.

The fleet's ingress records every engine request it finishes (version, outcome, whether it met
its SLO, TTFT, TPOT); ``window`` folds the ones since the step started into a ``VersionWindow``.
Shadow requests are never recorded here (they are not users' traffic).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

from servewise.fleet.rollout_gate import VersionWindow


class RequestOutcome(str, enum.Enum):
    SERVED = "served"
    ERROR = "error"  # 5xx: engine failure, lost replica
    SHED = "shed"  # 429 from admission (the fleet's or a replica's)


@dataclass(frozen=True)
class Finished:
    time_s: float  # when it ended (the recorder's clock)
    version: str
    outcome: RequestOutcome
    met_slo: bool  # served within every target of its class
    ttft_s: float | None
    tpot_s: float | None


class RolloutRecorder:
    """Finished requests per version since ``reset``; bounded (oldest dropped past ``capacity``)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._items: deque[Finished] = deque(maxlen=capacity)
        self.since_s = 0.0

    def reset(self, now_s: float) -> None:
        """A new step: only what ends from now on counts."""
        self._items.clear()
        self.since_s = now_s

    def record(self, item: Finished) -> None:
        if item.time_s >= self.since_s:
            self._items.append(item)

    def window(self, version: str) -> VersionWindow:
        items = [f for f in self._items if f.version == version]
        served = [f for f in items if f.outcome is RequestOutcome.SERVED]
        ttfts = tuple(f.ttft_s for f in served if f.ttft_s is not None)
        tpots = tuple(f.tpot_s for f in served if f.tpot_s is not None)
        return VersionWindow(
            num_requests=len(items), num_met=sum(1 for f in served if f.met_slo),
            num_errors=sum(1 for f in items if f.outcome is RequestOutcome.ERROR),
            num_shed=sum(1 for f in items if f.outcome is RequestOutcome.SHED),
            ttft_p99_s=percentile(list(ttfts), 99), tpot_p99_s=percentile(list(tpots), 99),
            ttft_samples_s=ttfts, tpot_samples_s=tpots)

    def count(self, version: str) -> int:
        return sum(1 for f in self._items if f.version == version)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (exact on the samples; None without any)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
