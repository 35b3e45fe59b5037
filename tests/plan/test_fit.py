"""Fitting step costs: known coefficients are recovered from synthetic timings."""

from __future__ import annotations

import random

import numpy as np
import pytest

from servewise.plan.fit import StepSample, fit_forward, fit_line, model_from_coefficients, nnls
from servewise.plan.step_cost import RowCost, StepCostModel, StepShape

BOUNDS = (16, 64)
TRUE = StepCostModel(tokens=RowCost(BOUNDS, (0.004, 0.030, 0.012), (0.0002, 0.0001, 0.0011)),
                     sampled=RowCost(BOUNDS, (0.002, 0.020, 0.0), (0.0003, 0.00005, 0.0004)),
                     per_paged_pair_fused_s=2e-7, per_paged_pair_s=5e-7, per_dense_pair_s=3e-8,
                     host_fixed_s=0.0, host_per_seq_s=0.0)


def _shapes(n: int, seed: int = 0) -> list[StepShape]:
    rng = random.Random(seed)
    shapes = []
    for _ in range(n):
        tokens = rng.choice([rng.randint(1, 16), rng.randint(17, 64), rng.randint(65, 512)])
        sampled = rng.randint(0, min(tokens, 128))
        paged = rng.randint(0, 200_000) if tokens <= 16 or rng.random() < 0.7 else 0
        dense = 0 if tokens <= 16 else rng.randint(0, 400_000)
        shapes.append(StepShape(tokens, sampled, max(1, sampled), paged, dense))
    return shapes


def _coefficients(model: StepCostModel) -> list[float]:
    return [*model.tokens.fixed_s, *model.tokens.per_row_s, *model.sampled.fixed_s, *model.sampled.per_row_s,
            model.per_paged_pair_fused_s, model.per_paged_pair_s, model.per_dense_pair_s]


def test_exact_timings_give_back_the_coefficients():
    samples = [StepSample(s, TRUE.forward_s(s)) for s in _shapes(400)]
    coef, error = fit_forward(samples, BOUNDS)
    assert coef == pytest.approx(_coefficients(TRUE), rel=1e-5, abs=1e-12)
    assert error.r2 == pytest.approx(1.0) and error.mape < 1e-6 and error.cv_mape < 1e-6


def test_noisy_timings_give_the_coefficients_within_the_noise():
    rng = np.random.default_rng(1)
    shapes = _shapes(1200, seed=2)
    samples = [StepSample(s, TRUE.forward_s(s) * float(rng.normal(1.0, 0.03))) for s in shapes]
    coef, error = fit_forward(samples, BOUNDS)
    fitted = model_from_coefficients(coef, BOUNDS, host=(0.0, 0.0))
    for shape in _shapes(200, seed=9):  # held-out shapes: within a few percent of the truth
        assert fitted.forward_s(shape) == pytest.approx(TRUE.forward_s(shape), rel=0.05)
    big = [(c, t) for c, t in zip(coef, _coefficients(TRUE), strict=True) if t >= 1e-4]
    assert [c for c, _ in big] == pytest.approx([t for _, t in big], rel=0.15)
    assert 0.015 < error.mape < 0.04 and error.cv_mape < 0.05 and error.r2 > 0.98


def test_a_column_the_data_never_excites_stays_at_zero():
    shapes = [s for s in _shapes(300) if s.num_tokens > 16]  # no small steps at all
    coef, _ = fit_forward([StepSample(s, TRUE.forward_s(s)) for s in shapes], BOUNDS)
    assert coef[0] == 0.0 and coef[3] == 0.0  # fixed and per-token cost of the ≤16-token regime
    assert all(c >= 0 for c in coef)


def test_too_few_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 10 measured steps"):
        fit_forward([StepSample(StepShape(1, 1, 1, 1, 0), 0.01)] * 3, BOUNDS)


def test_nnls_matches_least_squares_when_unconstrained_and_clamps_otherwise():
    rng = np.random.default_rng(0)
    a = rng.random((60, 4))
    assert nnls(a, a @ np.array([1.0, 0.5, 2.0, 0.25])) == pytest.approx([1.0, 0.5, 2.0, 0.25])
    x = nnls(a, a @ np.array([1.0, -1.0, 2.0, 0.5]))
    assert x[1] == 0.0 and all(x >= 0)
    free = np.linalg.lstsq(a[:, [0, 2, 3]], a @ np.array([1.0, -1.0, 2.0, 0.5]), rcond=None)[0]
    assert x[[0, 2, 3]] == pytest.approx(free)


def test_fit_line_recovers_intercept_and_slope():
    xs = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert fit_line(xs, [0.001 + 0.0002 * x for x in xs]) == pytest.approx((0.001, 0.0002))
    assert fit_line([], []) == (0.0, 0.0)
