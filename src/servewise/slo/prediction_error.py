"""How far admission's TTFT predictions are from the TTFTs that followed."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class PredictionErrorSummary:
    """Over the most recent ``num_samples`` predictions (error = predicted - actual)."""

    num_samples: int  # in the summary (≤ the stats' capacity)
    num_observed: int  # since start
    mean_abs_error_s: float | None
    mean_signed_error_s: float | None  # > 0: admission is pessimistic (predicts slower than real)
    p90_abs_error_s: float | None


class PredictionErrorStats:
    """The last ``capacity`` errors in a ring: O(1) observe, a sort of the ring per summary."""

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError("capacity must be ≥ 1")
        self._errors: deque[float] = deque(maxlen=capacity)
        self.num_observed = 0

    def observe(self, predicted_s: float, actual_s: float) -> None:
        error = predicted_s - actual_s
        if not math.isfinite(error):
            return
        self._errors.append(error)
        self.num_observed += 1

    def summary(self) -> PredictionErrorSummary:
        n = len(self._errors)
        if n == 0:
            return PredictionErrorSummary(0, self.num_observed, None, None, None)
        abs_sorted = sorted(abs(e) for e in self._errors)
        p90 = abs_sorted[max(0, math.ceil(0.9 * n) - 1)]
        return PredictionErrorSummary(n, self.num_observed, sum(abs_sorted) / n, sum(self._errors) / n, p90)
