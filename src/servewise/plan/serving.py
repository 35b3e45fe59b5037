"""The serving calibration: how the real server's figures differ from the engine's alone.

``servewise profile`` measures the engine by itself. Behind ``servewise serve`` the same engine
shares the cores with the HTTP event loop (parsing, chat template, tokenizer, one SSE event
per token per stream) and with the client, so on a small machine its steps run slower, more
so the more streams there are, and a client sees its first token later than the engine made
it. The profile's last phase serves a short, light open-loop load (about one stream at a
time) through the real server and the bench, replays the very same requests through the
simulator, and fits two corrections (this module; the I/O is ``plan_cli/serving.py``):

- ``forward_scale`` σ multiplies every step: the scale that makes the median measured /
  simulated time per output token 1 (found by rescaling until the simulation matches).
- the first token as the client sees it: ``ttft = ttft_fixed_s + ttft_scale · simulated ttft``,
  fitted by least relative squares on the requests' TTFTs (after σ). The shift delays the
  whole stream (every later token alike), so it changes TTFT and E2E, not TPOT.

They are empirical: measured at a light load on this machine, with the client on the same
machine (as ``plan validate`` runs it). What grows with the number of streams (one SSE event
per token per stream) is not in them, so heavier loads stay somewhat under-predicted.
``servewise plan --engine-only`` ignores them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from servewise.plan.step_cost import StepCostModel

MIN_REQUESTS = 5  # fewer pairs cannot fit two coefficients with any confidence


@dataclass(frozen=True)
class ServingCalibration:
    forward_scale: float  # σ: multiplies every step
    ttft_fixed_s: float  # α: seconds added to every first token
    ttft_scale: float  # β: multiplies the simulated time to first token
    num_requests: int  # requests the fit used
    rate_per_s: float  # the calibration load's Poisson rate
    tpot_mape_engine_only: float  # per-request TPOT error of the engine-only simulation
    tpot_mape_calibrated: float  # ... and after the calibration
    ttft_mape_engine_only: float  # per-request TTFT error of the engine-only simulation
    ttft_mape_calibrated: float

    def __post_init__(self) -> None:
        if not (self.forward_scale > 0 and self.ttft_scale > 0 and self.ttft_fixed_s >= 0):
            raise ValueError("a serving calibration needs forward_scale > 0, ttft_scale > 0, ttft_fixed_s ≥ 0")

    def apply(self, cost: StepCostModel) -> StepCostModel:
        """The step costs behind the server."""
        return cost.scaled(self.forward_scale)

    def first_token_shift_s(self, ttft_s: float) -> float:
        """How much later than simulated the client sees its first token (and every later one)."""
        return max(self.ttft_fixed_s + (self.ttft_scale - 1.0) * ttft_s, -ttft_s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServingCalibration:
        values: dict[str, Any] = {f.name: float(data[f.name]) for f in dataclasses.fields(cls)
                                  if f.name != "num_requests"}
        return cls(num_requests=int(data["num_requests"]), **values)

    def describe(self) -> str:
        return (f"serving calibration: steps ×{self.forward_scale:.3f}, first token "
                f"{1e3 * self.ttft_fixed_s:.1f} ms + {self.ttft_scale:.3f} × simulated "
                f"({self.num_requests} requests at {self.rate_per_s:.2f} req/s; per-request TPOT error "
                f"{100 * self.tpot_mape_engine_only:.0f}% → {100 * self.tpot_mape_calibrated:.0f}%, TTFT "
                f"{100 * self.ttft_mape_engine_only:.0f}% → {100 * self.ttft_mape_calibrated:.0f}%)")


def fit_forward_scale(ratio_at: Callable[[float], float], *, rounds: int = 4) -> float:
    """σ with ``ratio_at(σ)`` (median measured / simulated TPOT at scale σ) at 1: TPOT is about
    proportional to σ, so rescaling by the ratio settles in a few rounds."""
    sigma = 1.0
    for _ in range(rounds):
        sigma *= ratio_at(sigma)
    return sigma


def fit_first_token(simulated_s: Sequence[float], measured_s: Sequence[float]) -> tuple[float, float]:
    """(α, β) minimising Σ ((α + β·s − m) / m)²: relative errors, so short and long prompts weigh alike.
    α is kept ≥ 0 (a negative fixed delay is not physical): then β alone is fitted."""
    pairs = [(s, m) for s, m in zip(simulated_s, measured_s, strict=True) if s > 0 and m > 0]
    if len(pairs) < MIN_REQUESTS:
        raise ValueError(f"a serving calibration needs ≥ {MIN_REQUESTS} requests with a first token, "
                         f"got {len(pairs)}")
    # weighted normal equations with weights 1/m²: [Σw Σws; Σws Σws²] [α β]ᵀ = [Σwm Σwsm]ᵀ
    w = [1.0 / (m * m) for _, m in pairs]
    sw = sum(w)
    sws = sum(wi * s for wi, (s, _) in zip(w, pairs, strict=True))
    swss = sum(wi * s * s for wi, (s, _) in zip(w, pairs, strict=True))
    swm = sum(wi * m for wi, (_, m) in zip(w, pairs, strict=True))
    swsm = sum(wi * s * m for wi, (s, m) in zip(w, pairs, strict=True))
    det = sw * swss - sws * sws
    if det > 1e-12 * sw * swss:
        alpha = (swm * swss - sws * swsm) / det
        beta = (sw * swsm - sws * swm) / det
        if alpha >= 0 and beta > 0:
            return alpha, beta
    return 0.0, swsm / swss  # through the origin


def median_ratio(simulated_s: Sequence[float], measured_s: Sequence[float]) -> float:
    """The median of measured / simulated over the pairs (1.0 if none)."""
    ratios = sorted(m / s for s, m in zip(simulated_s, measured_s, strict=True) if s > 0 and m > 0)
    if not ratios:
        return 1.0
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2


def relative_error(simulated_s: Sequence[float], measured_s: Sequence[float]) -> float:
    """Mean absolute relative error of the pairs (measured > 0)."""
    errors = [abs(s - m) / m for s, m in zip(simulated_s, measured_s, strict=True) if m > 0]
    return sum(errors) / len(errors) if errors else 0.0
