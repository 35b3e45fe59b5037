"""Plans: intervals, capacity, replicas for a target, the frontier, and missing profiles."""

from __future__ import annotations

import dataclasses

import pytest

from servewise.bench.slo import SloSpec
from servewise.plan.knobs import Knobs, arch_from_dict
from servewise.plan.planner import Planner, PlanSettings, ProfileSet, build_plan
from servewise.plan.profile import ProfileError
from tests.plan.factories import FixedSource, make_cost, make_profile, slo_class
from tests.plan.test_knobs import ARCH

SLO = SloSpec(ttft_s=1.0, tpot_s=0.1)
COST = make_cost(fixed_s=0.01, per_token_s=0.0004, per_sampled_s=0.001, host_fixed_s=0.001)


def planner(**settings) -> Planner:
    values = {"slo": SLO, "slo_class": slo_class(ttft_s=1.0, tpot_s=0.1), "seeds": 2, **settings}
    return Planner(ProfileSet([make_profile(cost=COST)]), arch_from_dict(ARCH), PlanSettings(**values))


def test_each_point_carries_an_interval_around_its_figures():
    plan = build_plan(planner(cost_error=0.05), [Knobs(max_num_seqs=8)], [], FixedSource([2.0, 8.0], 60))
    for point in plan.points:
        for name, (low, high) in point.intervals.items():
            value = point.figures[name]
            assert value is not None and low <= value <= high, name
        assert point.intervals["ttft_p99_s"][1] > point.intervals["ttft_p99_s"][0]
    assert plan.points[1].figures["ttft_p99_s"] > plan.points[0].figures["ttft_p99_s"]


def test_capacity_is_the_highest_rate_meeting_the_slo():
    source = FixedSource([2.0], 60)
    plan = build_plan(planner(), [Knobs()], [], source)
    capacity = plan.capacities[0].max_rate
    assert capacity > 2.0
    p = planner()
    check = lambda rate: p.simulate(Knobs(), *source.at_rate(rate), source.at_rate(rate)[1].points[0])[0]  # noqa: E731
    assert check(capacity).slo_attainment_pct >= 99.0
    assert check(capacity * 1.1).slo_attainment_pct < 99.0


def test_replicas_for_a_target_rate_meet_it_with_headroom():
    source = FixedSource([2.0], 60)
    plan = build_plan(planner(target_rate=12.0, headroom=0.25, price_per_hour=1.0), [Knobs()], [], source)
    target = plan.targets[0]
    per_replica = plan.capacities[0].per_replica
    assert target.replicas is not None and target.replicas >= 12.0 * 1.25 / per_replica * 0.8
    p = planner()
    load_workload, load = source.at_rate(15.0)
    fleet = dataclasses.replace(Knobs(), replicas=target.replicas)
    assert p.simulate(fleet, load_workload, load, load.points[0])[0].slo_attainment_pct >= 99.0
    assert target.cost_per_1m is not None and target.cost_per_1m > 0


def test_the_frontier_and_the_best_configuration_over_a_grid():
    cells = [Knobs(max_num_seqs=n) for n in (1, 4, 16)]
    plan = build_plan(planner(), cells, ["max_num_seqs"], FixedSource([1.0, 4.0], 40))
    assert any(p.pareto for p in plan.points)
    best = plan.best
    assert best is not None and best.label == "max_num_seqs=16"
    assert best.per_replica > next(c for c in plan.capacities if c.label == "max_num_seqs=1").per_replica


def test_a_configuration_without_its_profile_is_named_with_the_command_to_make_it():
    with pytest.raises(ProfileError, match="no profile for linear_backend=fp32 with 2 threads.*servewise profile "
                                           "--linear-backend fp32 --threads 2"):
        build_plan(planner(), [Knobs(linear_backend="fp32")], [], FixedSource([1.0], 10))
