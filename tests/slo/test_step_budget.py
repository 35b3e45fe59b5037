import pytest

from servewise.config import ConfigError, SchedulerConfig
from servewise.slo.admission import AdmissionConfig, prefill_time_s
from servewise.slo.cost_model import CostModelConfig, StepCost, StepCostModel
from servewise.slo.step_budget import (
    FixedStepBudget,
    SLOStepBudget,
    create_step_budget,
    prefill_budget,
    step_target_for,
)

COST = StepCost(step_overhead_s=0.010, prefill_s_per_token=0.001, decode_s_per_token=0.004)
B = 512


def test_full_budget_without_decodes_or_without_a_target():
    assert prefill_budget(0, B, COST, step_target_s=0.1) == B
    assert prefill_budget(16, B, COST, step_target_s=None) == B - 16


def test_prefill_shrinks_under_decode_load_to_stay_within_the_target():
    # 16 decodes cost 10 + 64 = 74 ms; 135 ms leaves 61 ms, i.e. 61 prompt tokens at 1 ms each
    assert prefill_budget(16, B, COST, step_target_s=0.135) == 61
    assert COST.step_s(61, 16) <= 0.135 < COST.step_s(62, 16)
    # more decodes, less prefill; never more than what is left of B
    assert prefill_budget(20, B, COST, step_target_s=0.135) == 45
    assert prefill_budget(4, B, COST, step_target_s=10.0) == B - 4


def test_the_floor_keeps_prefill_moving_when_decodes_fill_the_target():
    assert prefill_budget(40, B, COST, step_target_s=0.135, min_prefill_tokens=32) == 32
    assert prefill_budget(500, B, COST, step_target_s=0.135, min_prefill_tokens=32) == 12  # what B leaves
    assert prefill_budget(B, B, COST, step_target_s=0.135) == 0


def test_a_free_prefill_cost_means_the_whole_budget():
    free = StepCost(0.01, 0.0, 0.004)
    assert prefill_budget(16, B, free, step_target_s=0.135) == B - 16


def test_step_target_is_the_tightest_tpot_times_the_margin():
    assert step_target_for([None, 0.2, 0.15, None], 0.9) == pytest.approx(0.135)
    assert step_target_for([None], 0.9) is None
    assert step_target_for([], 0.9) is None


def test_policies_from_the_scheduler_config():
    config = SchedulerConfig(max_num_batched_tokens=B, step_tpot_margin=0.9, min_prefill_chunk_tokens=8)
    model = StepCostModel(CostModelConfig(prior_step_overhead_s=0.010, prior_prefill_s_per_token=0.001,
                                          prior_decode_s_per_token=0.004))
    slo = create_step_budget(config, model)
    assert isinstance(slo, SLOStepBudget)
    assert slo.prefill_tokens(16, 0.15) == 61 and slo.prefill_tokens(16, None) == B - 16
    assert slo.prefill_tokens(40, 0.15) == 8
    fixed = create_step_budget(SchedulerConfig(max_num_batched_tokens=B, step_budget="fixed"), model)
    assert isinstance(fixed, FixedStepBudget) and fixed.prefill_tokens(16, 0.15) == B - 16
    with pytest.raises(ConfigError):
        SchedulerConfig(step_budget="dynamic")
    with pytest.raises(ConfigError):
        SchedulerConfig(step_tpot_margin=0.0)


def test_ttft_prediction_uses_the_same_rule():
    seconds, steps = prefill_time_s(610, 16, B, COST, step_target_s=0.135)
    assert steps == 10  # 61 prompt tokens per step
    assert seconds == pytest.approx(10 * (0.010 + 16 * 0.004) + 610 * 0.001)
    _, fixed_steps = prefill_time_s(610, 16, B, COST)
    assert fixed_steps == 2  # 496 per step without a target
    config = AdmissionConfig.for_scheduler(SchedulerConfig(step_budget="fixed", step_tpot_margin=0.8,
                                                           min_prefill_chunk_tokens=16))
    assert not config.slo_step_budget and config.tpot_margin == 0.8 and config.min_prefill_tokens == 16
