import random

import pytest

from servewise.slo.cost_model import CostModelConfig, StepCostModel

from .factories import FakeStep

TRUE_A, TRUE_B, TRUE_C = 0.004, 0.0002, 0.0015


def synthetic_steps(n: int, *, seed: int = 0, noise: float = 0.02, prefill: bool = True) -> list[FakeStep]:
    rng = random.Random(seed)
    steps = []
    for i in range(n):
        num_prefill = rng.choice([0, 0, rng.randint(1, 512)]) if prefill else 0
        num_decode = rng.randint(0 if num_prefill else 1, 64)
        exact = TRUE_A + TRUE_B * num_prefill + TRUE_C * num_decode
        steps.append(FakeStep(duration_s=exact * (1 + rng.uniform(-noise, noise)),
                              num_tokens=num_prefill + num_decode, num_prefill_tokens=num_prefill,
                              num_requests=num_decode + 1, end_s=float(i)))
    return steps


def test_fit_recovers_known_coefficients():
    model = StepCostModel()  # priors 5x, 5x and 2x off the truth
    model.observe_new(synthetic_steps(400))
    cost = model.cost()
    assert cost.step_overhead_s == pytest.approx(TRUE_A, rel=0.1)
    assert cost.prefill_s_per_token == pytest.approx(TRUE_B, rel=0.05)
    assert cost.decode_s_per_token == pytest.approx(TRUE_C, rel=0.05)
    assert cost.step_s(256, 16) == pytest.approx(TRUE_A + TRUE_B * 256 + TRUE_C * 16, rel=0.03)


def test_before_any_step_the_prior_holds():
    config = CostModelConfig(prior_step_overhead_s=0.01, prior_prefill_s_per_token=0.002,
                             prior_decode_s_per_token=0.005)
    cost = StepCostModel(config).cost()
    assert (cost.step_overhead_s, cost.prefill_s_per_token, cost.decode_s_per_token) == (0.01, 0.002, 0.005)


def test_unexcited_direction_stays_at_prior_without_wind_up():
    model = StepCostModel()
    model.observe_new(synthetic_steps(3000, prefill=False))  # hours of pure decode, forgetting all along
    cost = model.cost()
    assert cost.prefill_s_per_token == pytest.approx(CostModelConfig().prior_prefill_s_per_token)
    assert cost.decode_s_per_token == pytest.approx(TRUE_C, rel=0.05)


def test_forgetting_tracks_a_slowdown():
    model = StepCostModel()
    model.observe_new(synthetic_steps(300))
    slow = [FakeStep(s.duration_s * 2, s.num_tokens, s.num_prefill_tokens, s.num_requests, s.end_s + 300)
            for s in synthetic_steps(600, seed=1)]
    model.observe_new(slow)
    assert model.cost().prefill_s_per_token == pytest.approx(2 * TRUE_B, rel=0.1)


def test_repeated_windows_are_not_counted_twice_and_junk_is_ignored():
    model = StepCostModel()
    steps = synthetic_steps(10)
    assert model.observe_new(steps) == 10
    assert model.observe_new(steps) == 0
    assert model.observe_new(steps + synthetic_steps(15)[10:]) == 5
    model.observe(FakeStep(float("nan"), 5, 5, 1, 100.0))
    model.observe(FakeStep(0.1, 0, 0, 0, 101.0))
    assert model.num_steps == 15


def test_coefficients_are_clamped():
    model = StepCostModel()
    # Bigger prefills that are *faster*: a negative slope would be nonsense; it is clamped to 0.
    for i in range(200):
        num_prefill = 100 + (i % 5) * 100
        model.observe(FakeStep(0.5 - num_prefill * 0.0005, num_prefill, num_prefill, 1, float(i)))
    cost = model.cost()
    assert cost.prefill_s_per_token == 0.0
    assert 0.0 <= cost.step_overhead_s <= CostModelConfig().max_step_overhead_s


def test_a_fast_engine_that_only_decodes_one_sequence_is_not_predicted_at_its_prior():
    # Steps of one decode pin a + c only; c's prior (3 ms) is far above them. The unconstrained fit
    # puts a < 0: fixing it at 0 refits c to the data, where clamping afterwards kept c near its prior.
    model = StepCostModel()
    for i in range(300):
        model.observe(FakeStep(0.0004, 1, 0, 1, float(i)))
    cost = model.cost()
    assert cost.step_overhead_s == 0.0
    # within 2× of the step (the prior still weighs ~26 such steps against ~200 remembered), not 10×
    assert 0.0004 <= cost.step_s(0, 1) < 0.0008


def test_engine_step_records_fit_the_protocol():
    stats = pytest.importorskip("servewise.engine.stats")  # pulls in torch: the one test that does
    model = StepCostModel()
    records = [stats.StepRecord(duration_s=s.duration_s, num_tokens=s.num_tokens,
                                num_prefill_tokens=s.num_prefill_tokens, num_requests=s.num_requests,
                                end_s=s.end_s) for s in synthetic_steps(300)]
    engine_stats = stats.EngineStats()
    for r in records:
        engine_stats.record_step(r)
    model.observe_new(engine_stats.recent_steps)
    assert model.num_steps == 256  # the engine keeps the last RECENT_STEPS
    assert model.cost().prefill_s_per_token == pytest.approx(TRUE_B, rel=0.1)


@pytest.mark.parametrize("kwargs", [{"forgetting_factor": 0.1}, {"prior_weight_steps": 0.0},
                                    {"prior_step_overhead_s": -1.0}, {"reference_decode_tokens": 0}])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        CostModelConfig(**kwargs)
