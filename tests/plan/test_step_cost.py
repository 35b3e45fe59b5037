"""Step shapes are read the way the model runner splits a step; the cost model's regimes and file form."""

from __future__ import annotations

import pytest

from servewise.engine.model_runner import MAX_ALL_PAGED_STEP_TOKENS
from servewise.engine.scheduler import ScheduledChunk
from servewise.plan.step_cost import RowCost, StepCostModel, shape_of
from tests.engine.utils import create_request
from tests.plan.factories import make_cost


def _chunk(prompt: int, computed: int, new: int) -> ScheduledChunk:
    request = create_request(prompt)
    request.num_computed_tokens = computed
    return ScheduledChunk(request, new)


def test_a_large_step_splits_decodes_to_the_paged_kernel_and_prefill_to_dense_attention():
    decode = _chunk(prompt=101, computed=100, new=1)  # reaches its last token: samples
    prefill = _chunk(prompt=300, computed=40, new=60)  # a middle chunk: no sample
    shape = shape_of([decode, prefill])
    assert shape.num_tokens == 61 and shape.num_sampled == 1 and shape.num_seqs == 2
    assert shape.paged_pairs == 101  # the decode attends to 101 positions
    assert shape.dense_pairs == 60 * 40 + 60 * 61 // 2  # each new token attends to the context and its causal past
    assert not shape.fused


def test_a_small_step_is_all_paged_as_the_runner_runs_it():
    chunks = [_chunk(prompt=10, computed=0, new=10), _chunk(prompt=51, computed=50, new=1)]
    shape = shape_of(chunks)
    assert shape.num_tokens <= MAX_ALL_PAGED_STEP_TOKENS and shape.fused
    assert shape.dense_pairs == 0 and shape.paged_pairs == 55 + 51 and shape.num_sampled == 2


def test_row_regimes_switch_after_each_boundary():
    cost = RowCost((16, 64), (1.0, 2.0, 3.0), (0.1, 0.01, 0.001))
    assert [cost.regime(n) for n in (1, 16, 17, 64, 65)] == [0, 0, 1, 1, 2]
    assert cost.cost_s(16) == pytest.approx(1.0 + 1.6) and cost.cost_s(17) == pytest.approx(2.0 + 0.17)
    assert cost.cost_s(0) == 0.0


def test_bad_coefficients_are_refused():
    with pytest.raises(ValueError, match="needs 3 coefficients"):
        RowCost((16, 64), (1.0,), (0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="≥ 0"):
        RowCost((16,), (1.0, -1.0), (0.1, 0.1))
    with pytest.raises(ValueError, match="ascending"):
        RowCost((64, 16), (1.0,) * 3, (0.1,) * 3)


def test_the_model_round_trips_through_its_file_form_and_scales():
    model = make_cost(per_paged_pair_s=1e-7, host_fixed_s=0.001, ingress_s=0.002)
    assert StepCostModel.from_dict(model.to_dict()) == model
    shape = shape_of([_chunk(prompt=300, computed=0, new=200)])
    assert model.scaled(1.1).step_s(shape) == pytest.approx(1.1 * model.step_s(shape))
