"""Fitting the step-cost model (``step_cost.py``) to measured steps.

Method: least squares on relative error (each step weighted by 1 / its duration, since
steps range from milliseconds to a second and a planner cares about percent error on
each), with every coefficient constrained to be ≥ 0 (Lawson–Hanson active set): a
negative cost per token would extrapolate to negative step times. Columns the data
never excites (say, dense attention inside small steps) are fixed at 0.

Fit error is reported three ways: R² and MAPE on the samples themselves, and a 5-fold
cross-validated MAPE (each fold predicted by a fit on the other four), which is the
honest figure for steps the profile did not measure exactly; the planner widens its
prediction intervals by it.

Not modelled: noise that is not independent from step to step (another process taking a
core for seconds); a profile taken on a busy machine has a large CV MAPE, and says so.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from servewise.plan.step_cost import RowCost, StepCostModel, StepShape

NUM_FOLDS = 5


@dataclass(frozen=True)
class StepSample:
    """One measured step: its shape and how long its forward pass and sampling took."""

    shape: StepShape
    forward_s: float


@dataclass(frozen=True)
class FitError:
    r2: float  # on the samples, unweighted
    mape: float  # mean |predicted - measured| / measured, on the samples (0.05 = 5%)
    cv_mape: float  # the same, 5-fold cross-validated (each sample predicted by a fit without it)
    max_abs_pct_error: float  # worst single sample, as a fraction
    num_samples: int


def _regime(boundaries: Sequence[int], rows: int) -> int:
    return bisect.bisect_left(boundaries, rows)


def column_names(boundaries: Sequence[int]) -> list[str]:
    regimes = [f"≤{b}" for b in boundaries] + [f">{boundaries[-1]}" if boundaries else "all"]
    return ([f"step fixed ({r} tokens)" for r in regimes] + [f"per token ({r} tokens)" for r in regimes]
            + [f"sampling fixed ({r} rows)" for r in regimes] + [f"per sampled sequence ({r} rows)" for r in regimes]
            + ["per paged context token (fused small steps)", "per paged context token", "per dense attention pair"])


def design_row(shape: StepShape, boundaries: Sequence[int]) -> list[float]:
    """The shape as the regression's features, in the order of ``column_names``."""
    n = len(boundaries) + 1
    row = [0.0] * (4 * n + 3)
    r = _regime(boundaries, shape.num_tokens)
    row[r] = 1.0
    row[n + r] = float(shape.num_tokens)
    if shape.num_sampled > 0:
        rs = _regime(boundaries, shape.num_sampled)
        row[2 * n + rs] = 1.0
        row[3 * n + rs] = float(shape.num_sampled)
    row[4 * n + (0 if shape.fused else 1)] = float(shape.paged_pairs)
    row[4 * n + 2] = float(shape.dense_pairs)
    return row


def model_from_coefficients(coef: Sequence[float], boundaries: Sequence[int], *, host: tuple[float, float],
                            ingress: tuple[float, float] = (0.0, 0.0)) -> StepCostModel:
    n = len(boundaries) + 1
    c = [float(x) for x in coef]
    b = tuple(boundaries)
    return StepCostModel(tokens=RowCost(b, tuple(c[0:n]), tuple(c[n:2 * n])),
                         sampled=RowCost(b, tuple(c[2 * n:3 * n]), tuple(c[3 * n:4 * n])),
                         per_paged_pair_fused_s=c[4 * n], per_paged_pair_s=c[4 * n + 1], per_dense_pair_s=c[4 * n + 2],
                         host_fixed_s=host[0], host_per_seq_s=host[1], ingress_s=ingress[0],
                         ingress_per_token_s=ingress[1])


def nnls(a: np.ndarray, y: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """argmin ||a x - y|| subject to x ≥ 0 (Lawson & Hanson's active-set method)."""
    num_cols = a.shape[1]
    x = np.zeros(num_cols)
    passive = np.zeros(num_cols, dtype=bool)
    tol = 1e-12 * max(1.0, float(np.abs(a).max(initial=0.0))) * max(a.shape)
    for _ in range(max_iter):
        w = a.T @ (y - a @ x)
        candidates = np.where(~passive & (w > tol))[0]
        if candidates.size == 0:
            break
        passive[candidates[np.argmax(w[candidates])]] = True
        while True:
            z = np.zeros(num_cols)
            z[passive] = np.linalg.lstsq(a[:, passive], y, rcond=None)[0]
            if np.all(z[passive] > 0):
                x = z
                break
            blocking = passive & (z <= 0)
            alpha = np.min(x[blocking] / (x[blocking] - z[blocking]))
            x = x + alpha * (z - x)
            passive &= x > tol
    return x


def _weighted_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    weights = 1.0 / y
    scale = np.abs(x).max(axis=0)  # columns span 1 to 1e7: rescale so the solver sees O(1) numbers
    scale[scale == 0] = 1.0
    coef = nnls((x / scale) * weights[:, None], y * weights)
    return coef / scale


def fit_forward(samples: Sequence[StepSample], boundaries: Sequence[int]) -> tuple[list[float], FitError]:
    """Coefficients (in ``column_names`` order) and their fit error."""
    if len(samples) < 2 * NUM_FOLDS:
        raise ValueError(f"need at least {2 * NUM_FOLDS} measured steps to fit a step-cost model, got {len(samples)}")
    x = np.array([design_row(s.shape, boundaries) for s in samples])
    y = np.array([s.forward_s for s in samples])
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("measured step durations must be positive")
    coef = _weighted_fit(x, y)
    predicted = x @ coef
    folds = np.arange(len(y)) % NUM_FOLDS
    cv_predicted = np.empty_like(y)
    for fold in range(NUM_FOLDS):
        held = folds == fold
        cv_predicted[held] = x[held] @ _weighted_fit(x[~held], y[~held])
    rel = np.abs(predicted - y) / y
    ss_res = float(np.sum((predicted - y) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    error = FitError(r2=1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, mape=float(rel.mean()),
                     cv_mape=float((np.abs(cv_predicted - y) / y).mean()), max_abs_pct_error=float(rel.max()),
                     num_samples=len(y))
    return [float(c) for c in coef], error


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(intercept, slope) ≥ 0 by least squares; the mean when there is one distinct x."""
    if not xs:
        return 0.0, 0.0
    x = np.column_stack([np.ones(len(xs)), np.asarray(xs, dtype=float)])
    coef = nnls(x, np.asarray(ys, dtype=float))
    return float(coef[0]), float(coef[1])


def describe(coef: Sequence[float], boundaries: Sequence[int]) -> list[tuple[str, float]]:
    """(column name, coefficient) of the non-zero coefficients, for reports."""
    return [(name, c) for name, c in zip(column_names(boundaries), coef, strict=True) if c > 0 and math.isfinite(c)]
