"""How long an engine step takes, learnt online from the engine's own step timings.

Model: ``step_s ≈ a + b · prefill_tokens + c · decode_tokens``

- a: fixed cost of a step (scheduling, sampling, kernel launches, weight reads),
- b: seconds per prompt token computed in the step,
- c: seconds per decode token (one per running sequence).

Fit: exponentially weighted least squares with a ridge prior, i.e. recursive least
squares with forgetting, but written as decayed sufficient statistics solved on
demand: ``θ = (S_xx + M)⁻¹ (S_xy + M θ₀)``. Each step multiplies the statistics by the
forgetting factor λ (memory of ~1/(1-λ) steps) and adds its own. The prior term M θ₀
does *not* decay, so a direction the data never excites (say, hours of pure decode)
stays at its prior instead of drifting the way plain RLS with forgetting winds up.
The prior's weight is worth ``prior_weight_steps`` steps of a reference shape. Fitted
coefficients are clamped to [0, max]; recording is O(1), the 3×3 solve is cached
until the next step arrives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from servewise.engine.stats import StepRecord


class StepTiming(Protocol):
    """What the cost model reads from a step; ``servewise.engine.stats.StepRecord`` fits it.

    (Typed structurally so the slo layer does not import the engine package, which pulls
    in torch, at run time.)
    """

    @property
    def duration_s(self) -> float: ...
    @property
    def num_tokens(self) -> int: ...
    @property
    def num_prefill_tokens(self) -> int: ...
    @property
    def end_s(self) -> float: ...


if TYPE_CHECKING:
    # mypy checks here that the engine's StepRecord still satisfies StepTiming.
    def _step_record_fits(record: StepRecord) -> StepTiming:
        return record


@dataclass(frozen=True)
class CostModelConfig:
    # Priors: what the model predicts before it has seen a step (set them from a benchmark run).
    prior_step_overhead_s: float = 0.02  # a
    prior_prefill_s_per_token: float = 0.001  # b
    prior_decode_s_per_token: float = 0.003  # c
    # The prior counts as this many steps of the reference shape: enough to pin directions the data
    # never excites, small enough not to bias the ones it does (~1% after a few hundred steps).
    prior_weight_steps: float = 0.1
    reference_prefill_tokens: int = 256  # reference step shape that scales the prior's weight
    reference_decode_tokens: int = 16
    forgetting_factor: float = 0.995  # λ per step; the fit remembers ~1/(1-λ) = 200 steps
    max_step_overhead_s: float = 10.0  # clamp of a
    max_s_per_token: float = 1.0  # clamp of b and c

    def __post_init__(self) -> None:
        for attr in ("prior_step_overhead_s", "prior_prefill_s_per_token", "prior_decode_s_per_token"):
            value = getattr(self, attr)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{attr} must be ≥ 0, got {value!r}")
        if not self.prior_weight_steps > 0:
            raise ValueError("prior_weight_steps must be positive")
        if not (self.reference_prefill_tokens >= 1 and self.reference_decode_tokens >= 1):
            raise ValueError("reference token counts must be ≥ 1")
        if not 0.5 <= self.forgetting_factor <= 1.0:
            raise ValueError(f"forgetting_factor must be in [0.5, 1], got {self.forgetting_factor!r}")
        if not (self.max_step_overhead_s > 0 and self.max_s_per_token > 0):
            raise ValueError("clamps must be positive")


@dataclass(frozen=True)
class StepCost:
    """Fitted coefficients (seconds)."""

    step_overhead_s: float  # a
    prefill_s_per_token: float  # b
    decode_s_per_token: float  # c

    def step_s(self, num_prefill_tokens: float, num_decode_tokens: float) -> float:
        return (self.step_overhead_s + self.prefill_s_per_token * num_prefill_tokens
                + self.decode_s_per_token * num_decode_tokens)


class StepCostModel:
    """Online fit of step time from step records; not thread-safe (one owner)."""

    def __init__(self, config: CostModelConfig | None = None) -> None:
        self.config = config or CostModelConfig()
        c = self.config
        self._prior = (c.prior_step_overhead_s, c.prior_prefill_s_per_token, c.prior_decode_s_per_token)
        w = c.prior_weight_steps
        self._prior_weight = (w, w * c.reference_prefill_tokens ** 2, w * c.reference_decode_tokens ** 2)
        self._sxx = [[0.0] * 3 for _ in range(3)]
        self._sxy = [0.0] * 3
        self.num_steps = 0  # steps observed since start
        self._last_end_s: float | None = None
        self._cached: StepCost | None = None

    def observe(self, step: StepTiming) -> None:
        """Add one step (an empty step, or one with a non-finite duration, is ignored)."""
        if step.num_tokens <= 0 or not (math.isfinite(step.duration_s) and step.duration_s >= 0):
            return
        x = (1.0, float(step.num_prefill_tokens), float(step.num_tokens - step.num_prefill_tokens))
        lam = self.config.forgetting_factor
        for i in range(3):
            self._sxy[i] = lam * self._sxy[i] + x[i] * step.duration_s
            row = self._sxx[i]
            for j in range(3):
                row[j] = lam * row[j] + x[i] * x[j]
        self.num_steps += 1
        self._last_end_s = step.end_s
        self._cached = None

    def observe_new(self, steps: Iterable[StepTiming]) -> int:
        """Add the steps that ended after the last one seen (pass ``EngineStats.recent_steps``
        as often as you like); returns how many were new."""
        num_new = 0
        for step in steps:
            if self._last_end_s is None or step.end_s > self._last_end_s:
                self.observe(step)
                num_new += 1
        return num_new

    def cost(self) -> StepCost:
        if self._cached is None:
            self._cached = self._solve()
        return self._cached

    def _solve(self) -> StepCost:
        """The ridge fit with every coefficient ≥ 0: a coefficient the unconstrained fit makes
        negative is fixed at 0 and the others refitted (an active set; three unknowns). Clamping
        afterwards instead would keep the others' compensation: steps that only pin a + c (one
        decode each) with c's prior far above their time gave a < 0, clamped to 0, and c = the
        prior, ten times the step."""
        a = [[self._sxx[i][j] + (self._prior_weight[i] if i == j else 0.0) for j in range(3)] for i in range(3)]
        rhs = [self._sxy[i] + self._prior_weight[i] * self._prior[i] for i in range(3)]
        theta = [0.0, 0.0, 0.0]
        free = [0, 1, 2]
        while free:
            sub = _solve_linear([[a[i][j] for j in free] for i in free], [rhs[i] for i in free])
            negative = [(v, i) for v, i in zip(sub, free, strict=True) if not v >= 0]
            if not negative:
                for v, i in zip(sub, free, strict=True):
                    theta[i] = v
                break
            free.remove(min(negative)[1])
        c = self.config
        return StepCost(step_overhead_s=_clamp(theta[0], c.max_step_overhead_s),
                        prefill_s_per_token=_clamp(theta[1], c.max_s_per_token),
                        decode_s_per_token=_clamp(theta[2], c.max_s_per_token))


def _clamp(value: float, upper: float) -> float:
    return min(max(value, 0.0), upper) if math.isfinite(value) else upper


def _solve_linear(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the systems here are positive definite, ≤ 3×3)."""
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    n = len(b)
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for k in range(col, n + 1):
                m[r][k] -= f * m[col][k]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][k] * x[k] for k in range(r + 1, n))) / m[r][r]
    return x
