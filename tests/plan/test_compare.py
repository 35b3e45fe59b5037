"""Predicted vs measured: errors, tolerances widened by the measured spread, decisions."""

from __future__ import annotations

import dataclasses

import pytest

from servewise.bench.metrics import LatencyStats
from servewise.plan.compare import check_figure, compare, measured_capacity
from servewise.plan.knobs import Knobs
from servewise.plan.planner import build_plan
from servewise.plan.validation_report import render_markdown, summary_lines
from tests.plan.factories import FixedSource
from tests.plan.test_planner import planner


def test_a_figure_is_judged_against_its_tolerance_or_the_measured_spread():
    assert check_figure("ttft_p50_s", 1.05, [1.0, 1.0, 1.0]).ok
    assert not check_figure("ttft_p50_s", 1.15, [1.0, 1.0, 1.0]).ok
    noisy = check_figure("ttft_p99_s", 1.3, [0.8, 1.0, 1.2])  # spread 40% > 20%
    assert noisy.spread == pytest.approx(0.4) and noisy.tolerance == pytest.approx(0.4) and noisy.ok
    assert not check_figure("ttft_p50_s", 1.3, [0.8, 1.0, 1.2]).ok  # p50 gets no spread allowance
    assert check_figure("itl_p50_s", 9.0, [1.0]).ok is None  # reported, not judged
    assert check_figure("ttft_p50_s", None, [1.0]).ok is None


def test_measured_capacity_interpolates_between_the_last_pass_and_the_first_fail():
    value, lower_bound = measured_capacity([1.0, 3.0, 2.0], [1.0, 0.9, 0.995], 0.99)
    assert value == pytest.approx(2.0 + (0.995 - 0.99) / (0.995 - 0.9)) and not lower_bound
    assert measured_capacity([1.0, 2.0], [1.0, 1.0], 0.99) == (2.0, True)
    assert measured_capacity([1.0, 2.0], [0.5, 0.2], 0.99) == (None, False)


def test_a_measurement_equal_to_the_prediction_passes_and_a_slower_one_does_not():
    p = planner()
    source = FixedSource([1.0, 4.0], 40)
    plan = build_plan(p, [Knobs()], [], source)
    same = [[pt.summary for pt in plan.points]] * 3
    validation = compare(plan, {"base": same}, 0.99)
    assert all(f.ok in (True, None) for pt in validation.points for f in pt.figures)
    assert all(pt.decision_ok for pt in validation.points)

    def slower(summary):
        tpot = summary.tpot
        return dataclasses.replace(summary, tpot=LatencyStats(tpot.count, tpot.mean_s, tpot.p50_s * 1.3,
                                                              tpot.p90_s, tpot.p95_s, tpot.p99_s, tpot.max_s))

    validation = compare(plan, {"base": [[slower(pt.summary) for pt in plan.points]]}, 0.99)
    tpot = [f for pt in validation.points for f in pt.figures if f.name == "tpot_p50_s"]
    assert all(f.ok is False and f.error == pytest.approx(1 / 1.3 - 1) for f in tpot)
    assert "TPOT p50 (target ±10%): 0/2 within target" in summary_lines(validation)
    assert "| base | rate=1/s |" in render_markdown(validation, ["- test"])


def test_the_engines_own_busy_time_is_set_against_the_plans():
    from servewise.plan.compare import EngineTotals

    plan = build_plan(planner(), [Knobs()], [], FixedSource([1.0, 4.0], 20))
    predicted_busy = sum(p.engine_busy_s for p in plan.points)
    measured = EngineTotals(busy_s=predicted_busy * 1.25, num_steps=sum(p.num_steps for p in plan.points))
    validation = compare(plan, {"base": [[p.summary for p in plan.points]]}, 0.99,
                         {"base": [measured, EngineTotals(1e9, 1.0), EngineTotals(0.0, 1.0)]})
    [check] = validation.engine
    assert check.measured == measured  # the median repeat
    assert check.busy_error == pytest.approx(1 / 1.25 - 1)
    assert any("engine busy over the sweep" in line for line in summary_lines(validation))
