"""The autoscaling policy, pure: fast up, slow down, steady under steady load, bounds."""

from __future__ import annotations

from dataclasses import asdict

from servewise.fleet.autoscaling import ReplicaPressure, ScalingConfig, ScalingState, decide, fleet_load

CONFIG = ScalingConfig(min_replicas=1, max_replicas=4, upscale_delay_s=3, downscale_delay_s=60)


def load_on(n: int, demand: float) -> float:
    """Load per replica when ``demand`` replicas' worth of work is spread over n."""
    return demand / n


def simulate(demand_by_tick, current=1, config=CONFIG, start_ticks=0):
    """One decision per tick; a new replica serves ``start_ticks`` after it was asked for."""
    state, counts, running, starting = ScalingState(), [], current, []
    for tick, demand in enumerate(demand_by_tick):
        running += sum(1 for t in starting if t == tick)
        pressures = [ReplicaPressure(ttft=load_on(running, demand))] * running
        d = decide(config, current, running, pressures, state, float(tick))
        if d.num_replicas > current:
            starting += [tick + start_ticks] * (d.num_replicas - current)
            if start_ticks == 0:
                running += d.num_replicas - current
                starting = [t for t in starting if t != tick]
        elif d.num_replicas < current:
            running -= current - d.num_replicas
        current, state = d.num_replicas, d.state
        counts.append(current)
    return counts


def test_scales_up_within_the_upscale_delay_and_straight_to_what_is_needed():
    counts = simulate([2.1] * 10)  # 2.1 replicas' worth of work at a 0.7 target: 3 replicas
    assert counts == [1, 1, 1] + [3] * 7


def test_a_single_spike_does_not_scale_up():
    assert simulate([0.3, 3.0, 0.3, 0.3, 0.3, 0.3]) == [1] * 6


def test_scales_down_one_replica_at_a_time_after_the_delay():
    counts = simulate([0.3] * 200, current=3)  # 0.3 replicas of work: 1 is enough
    assert counts[59] == 3 and counts[60] == 2
    assert counts[121] == 1 and min(counts) == 1


def test_steady_load_in_the_band_never_oscillates():
    for demand in (0.75, 1.0, 1.3, 1.9, 2.5):
        counts = simulate([demand] * 600)
        settled = counts[100:]
        assert len(set(settled)) == 1, (demand, sorted(set(settled)))


def test_a_replica_still_starting_is_neither_cancelled_nor_doubled():
    counts = simulate([2.1] * 40, start_ticks=10)  # replicas take 10 ticks to load their model
    assert counts == [1, 1, 1] + [3] * 37


def test_bounds_are_respected():
    assert simulate([50.0] * 20)[-1] == CONFIG.max_replicas
    assert decide(CONFIG, 7, 7, [], ScalingState(), 0.0).num_replicas == CONFIG.max_replicas
    assert decide(CONFIG, 2, 2, [ReplicaPressure()] * 2, ScalingState(down_since_s=-1000), 0.0).num_replicas == 1


def test_shed_demand_counts_as_load():
    quiet_queue = ReplicaPressure(ttft=0.6, shed_rps=3.0, admitted_rps=3.0)
    assert fleet_load([quiet_queue]) == 1.2
    assert fleet_load([ReplicaPressure(tpot=0.5, burn=1.4)]) == 1.4


def test_state_survives_a_round_trip_through_a_dict():
    state = ScalingState(up_since_s=12.5)
    assert ScalingState.from_dict(asdict(state)) == state
    assert ScalingState.from_dict({}) == ScalingState()
