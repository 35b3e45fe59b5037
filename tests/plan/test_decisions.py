"""Pure decisions: capacity search, replicas, cost, the frontier, the closest point."""

from __future__ import annotations

import pytest

from servewise.plan.decisions import (
    closest_to_slo,
    cost_per_million_tokens,
    max_rate_meeting,
    meets_slo,
    pareto_front,
    replicas_needed,
)


@pytest.mark.parametrize("start", [0.1, 1.0, 3.7, 50.0])
def test_capacity_search_finds_the_threshold_from_any_start(start):
    calls = []

    def evaluate(rate: float) -> bool:
        calls.append(rate)
        return rate <= 2.35

    found = max_rate_meeting(evaluate, start, rel_tol=0.01)
    assert 2.35 * 0.98 <= found <= 2.35
    assert len(calls) < 30


def test_capacity_is_zero_when_nothing_passes():
    assert max_rate_meeting(lambda rate: False, 1.0) == 0.0
    with pytest.raises(ValueError):
        max_rate_meeting(lambda rate: True, 0.0)


def test_replicas_start_from_capacity_and_follow_the_simulated_fleet():
    # pooling: a fleet of n serves a bit more than n × 1 req/s
    assert replicas_needed(lambda n: 1.1 * n >= 12.0, 10.0, 1.0, 0.2) == 11
    # routing imbalance: a fleet of n serves less than n × 1 req/s
    assert replicas_needed(lambda n: 0.9 * n >= 12.0, 10.0, 1.0, 0.2) == 14
    assert replicas_needed(lambda n: False, 10.0, 1.0, 0.2) is None
    assert replicas_needed(lambda n: True, 10.0, 0.0, 0.2) is None


def test_cost_per_million_output_tokens():
    # 2 replicas at $1.5/h serving 500 tokens/s: $3/h for 1.8M tokens/h
    assert cost_per_million_tokens(1.5, 2, 500.0) == pytest.approx(3.0 / 1.8)
    assert cost_per_million_tokens(None, 2, 500.0) is None and cost_per_million_tokens(1.0, 1, 0.0) is None


def test_pareto_front_keeps_points_no_other_beats_everywhere():
    # (latency, throughput): lower latency and higher throughput are better
    points = [(1.0, 5.0), (2.0, 8.0), (2.5, 7.0), (0.5, 1.0), (3.0, 8.0), (None, 9.0)]
    assert pareto_front(points, [False, True]) == [True, True, False, True, False, True]


def test_meets_slo_and_closest_point():
    assert meets_slo(0.995, 0.99) and not meets_slo(0.98, 0.99) and not meets_slo(None, 0.99)
    assert closest_to_slo([0.5, 0.9, 0.9, None], [3.0, 2.5, 2.1, 1.0]) == 2
