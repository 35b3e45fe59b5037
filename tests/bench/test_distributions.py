import random
import statistics

import pytest

from servewise.bench.distributions import LengthDistribution, parse_length


def test_parse_forms():
    assert parse_length("128") == LengthDistribution("fixed", 128)
    assert parse_length("fixed:64") == LengthDistribution("fixed", 64)
    assert parse_length("uniform:10,20") == LengthDistribution("uniform", 10, 20)
    assert str(parse_length("lognormal:256,0.5")) == "lognormal:256,0.5"


@pytest.mark.parametrize("text", ["uniform:20,10", "normal:5", "gaussian:1,2", "fixed:0", "x", "normal:10,-1"])
def test_parse_rejects_bad_input(text):
    with pytest.raises(ValueError):
        parse_length(text)


@pytest.mark.parametrize("text", ["fixed:50", "uniform:10,90", "normal:50,10", "lognormal:50,0.3"])
def test_samples_are_positive_ints_near_the_mean(text):
    dist = parse_length(text)
    samples = [dist.sample(random.Random(i)) for i in range(2000)]
    assert all(isinstance(s, int) and s >= 1 for s in samples)
    assert statistics.mean(samples) == pytest.approx(dist.mean, rel=0.05)


def test_uniform_bounds_are_inclusive_and_sampling_is_seeded():
    dist = parse_length("uniform:3,5")
    rng = random.Random(7)
    samples = [dist.sample(rng) for _ in range(200)]
    assert set(samples) == {3, 4, 5}
    assert samples == [dist.sample(r) for r in [random.Random(7)] for _ in range(200)]


def test_samples_are_clipped():
    dist = LengthDistribution("normal", 10, 100, max_tokens=20)
    assert {dist.sample(random.Random(i)) for i in range(300)} <= set(range(1, 21))
