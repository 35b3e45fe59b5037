"""The serving calibration: its fits, how the simulator applies it, and that a plan can ignore it."""

from __future__ import annotations

import dataclasses

import pytest

from servewise.bench.schedule import LoadConfig, LoadMode, LoadPoint
from servewise.plan.profile import Profile
from servewise.plan.serving import (
    ServingCalibration,
    fit_first_token,
    fit_forward_scale,
    median_ratio,
    relative_error,
)
from servewise.plan.simulator import FleetSimulator
from servewise.plan.step_cost import StepShape
from servewise.plan.workload import PointWorkload, SimRequest
from tests.plan.factories import make_cost, make_profile, make_spec, slo_class


def calibration(**changes) -> ServingCalibration:
    values = dict(forward_scale=1.0, ttft_fixed_s=0.0, ttft_scale=1.0, num_requests=32, rate_per_s=1.0,
                  tpot_mape_engine_only=0.2, tpot_mape_calibrated=0.05, ttft_mape_engine_only=0.3,
                  ttft_mape_calibrated=0.1)
    return ServingCalibration(**{**values, **changes})


def test_the_first_token_fit_recovers_a_known_delay_and_scale():
    simulated = [0.02, 0.05, 0.1, 0.2, 0.4, 0.8]
    measured = [0.012 + 1.15 * s for s in simulated]
    alpha, beta = fit_first_token(simulated, measured)
    assert alpha == pytest.approx(0.012, rel=1e-9) and beta == pytest.approx(1.15, rel=1e-9)


def test_a_negative_fixed_delay_is_not_fitted_the_scale_alone_is():
    simulated = [0.1, 0.2, 0.3, 0.4, 0.5]
    alpha, beta = fit_first_token(simulated, [1.3 * s - 0.02 for s in simulated])
    assert alpha == 0.0 and 1.2 < beta < 1.3


def test_too_few_requests_cannot_calibrate():
    with pytest.raises(ValueError, match="≥ 5 requests"):
        fit_first_token([0.1, 0.2], [0.1, 0.2])


def test_the_forward_scale_settles_where_the_simulated_tpot_matches():
    measured_tpot = 0.0091
    sigma = fit_forward_scale(lambda s: median_ratio([0.007 * s] * 5, [measured_tpot] * 5))
    assert sigma == pytest.approx(1.3, rel=1e-9)


def test_median_ratio_and_relative_error():
    assert median_ratio([1, 2, 4], [2, 2, 2]) == 1.0
    assert median_ratio([1, 1, 1, 1], [1, 2, 3, 4]) == 2.5
    assert median_ratio([], []) == 1.0
    assert relative_error([1.1, 0.9], [1.0, 1.0]) == pytest.approx(0.1)


def test_a_calibrated_profile_round_trips_and_an_older_one_still_loads(tmp_path):
    profile = dataclasses.replace(make_profile(), serving=calibration(forward_scale=1.08, ttft_fixed_s=0.016))
    profile.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json") == profile
    data = make_profile().to_dict()
    del data["serving"]  # a profile written before the calibration existed
    assert Profile.from_dict(data).serving is None


def test_bad_calibrations_are_refused():
    for bad in ({"forward_scale": 0.0}, {"ttft_scale": -1.0}, {"ttft_fixed_s": -0.001}):
        with pytest.raises(ValueError):
            calibration(**bad)


def _one_request(serving: ServingCalibration | None, cost):
    prompt, output = 100, 6
    point = LoadPoint(LoadMode.OPEN_LOOP, rate_per_s=1.0)
    workload = PointWorkload((SimRequest(tuple(range(10, 10 + prompt)), output),), (0.5,))
    sim = FleetSimulator(make_spec(), serving.apply(cost) if serving else cost, slo_class(), admission=False,
                         serving=serving)
    return sim.run(workload, LoadConfig((point,), num_requests=1), point).records[0], prompt


def test_the_simulator_delays_the_whole_stream_as_its_first_token_and_scales_steps():
    cost = make_cost(fixed_s=0.02, per_token_s=0.001, per_sampled_s=0.003, host_fixed_s=0.001)
    plain, prompt = _one_request(None, cost)
    served, _ = _one_request(calibration(forward_scale=1.2, ttft_fixed_s=0.015, ttft_scale=1.1), cost)
    scaled = cost.scaled(1.2)
    engine_ttft = scaled.request_ingress_s(prompt) + scaled.step_s(
        StepShape(prompt, 1, 1, 0, prompt * (prompt + 1) // 2))
    assert served.ttft_s == pytest.approx(0.015 + 1.1 * engine_ttft, rel=1e-9)
    assert served.itls_s == pytest.approx([1.2 * g for g in plain.itls_s], rel=1e-9)  # steps × σ, no other change
    assert served.e2e_s - served.ttft_s == pytest.approx(1.2 * (plain.e2e_s - plain.ttft_s), rel=1e-9)


def test_a_plan_applies_the_profiles_calibration_unless_told_to_simulate_the_engine_alone():
    from servewise.bench.slo import SloSpec
    from servewise.plan.knobs import Knobs, arch_from_dict
    from servewise.plan.planner import Planner, PlanSettings, ProfileSet
    from tests.plan.factories import FixedSource
    from tests.plan.test_knobs import ARCH

    profile = dataclasses.replace(make_profile(cost=make_cost(fixed_s=0.01, per_token_s=0.0005)),
                                  serving=calibration(forward_scale=1.5, ttft_fixed_s=0.05))
    source = FixedSource([1.0], 5)

    def p50s(engine_only: bool) -> tuple[float, float]:
        settings = PlanSettings(slo=SloSpec(), slo_class=slo_class(), seeds=1, engine_only=engine_only)
        summary, _ = Planner(ProfileSet([profile]), arch_from_dict(ARCH), settings).sweep(Knobs(), source)[0]
        assert summary.ttft.p50_s is not None and summary.tpot.p50_s is not None
        return summary.ttft.p50_s, summary.tpot.p50_s

    (served_ttft, served_tpot), (engine_ttft, engine_tpot) = p50s(False), p50s(True)
    assert served_ttft == pytest.approx(0.05 + 1.5 * engine_ttft, rel=1e-6)
    assert served_tpot == pytest.approx(1.5 * engine_tpot, rel=1e-6)
