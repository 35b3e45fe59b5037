import math
import random
import statistics

import pytest

from servewise.bench.schedule import LoadConfig, LoadMode, LoadPoint, arrival_times_s, sweep


def load(**fields):
    return LoadConfig(points=sweep(rates=[1.0]), **fields)


def test_poisson_schedule_has_the_mean_rate():
    times = arrival_times_s(10.0, load(num_requests=5000), random.Random(0))
    assert len(times) == 5000
    assert len(times) / times[-1] == pytest.approx(10.0, rel=0.05)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    # Exponential gaps: the standard deviation equals the mean.
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, abs=0.1)


def test_burstiness_changes_the_spread_not_the_rate():
    for burstiness, cv in ((0.25, 2.0), (4.0, 0.5)):
        times = arrival_times_s(10.0, load(num_requests=5000, burstiness=burstiness), random.Random(0))
        gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
        assert len(times) / times[-1] == pytest.approx(10.0, rel=0.08)
        assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(cv, rel=0.15)


def test_schedules_are_seeded():
    config = load(num_requests=50)
    assert arrival_times_s(3.0, config, random.Random(9)) == arrival_times_s(3.0, config, random.Random(9))
    assert arrival_times_s(3.0, config, random.Random(9)) != arrival_times_s(3.0, config, random.Random(8))


def test_duration_and_warmup_bound_the_schedule():
    times = arrival_times_s(20.0, load(num_requests=None, duration_s=2.0, warmup_s=1.0), random.Random(0))
    assert times[-1] < 3.0 and len(times) == pytest.approx(60, rel=0.3)
    config = load(num_requests=10, warmup_s=1.0, warmup_requests=2)
    times = arrival_times_s(5.0, config, random.Random(0))
    assert sum(not config.is_warmup(i, t) for i, t in enumerate(times)) == 10
    assert all(t < 1.0 or i < 2 for i, t in enumerate(times[:-10]))


def test_max_throughput_sends_everything_at_once():
    assert arrival_times_s(math.inf, load(num_requests=5, warmup_requests=2), random.Random(0)) == [0.0] * 7
    with pytest.raises(ValueError):
        LoadConfig(points=sweep(rates=[math.inf]), num_requests=None, duration_s=10)


def test_points_and_labels():
    assert [p.label for p in sweep(rates=[0.5, 2, math.inf])] == ["rate=0.5/s", "rate=2/s", "rate=inf"]
    assert [p.label for p in sweep(concurrencies=[1, 8])] == ["concurrency=1", "concurrency=8"]
    point = LoadPoint(LoadMode.OPEN_LOOP, rate_per_s=math.inf)
    assert LoadPoint.from_dict(point.to_dict()) == point and point.is_max_throughput
    with pytest.raises(ValueError):
        LoadPoint(LoadMode.CLOSED_LOOP, rate_per_s=1.0)
    with pytest.raises(ValueError):
        LoadConfig(points=sweep(rates=[1.0]), num_requests=10, duration_s=5)
