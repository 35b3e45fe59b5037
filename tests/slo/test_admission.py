import math

import pytest

from servewise.config import SchedulerConfig
from servewise.errors import OverloadedError
from servewise.slo.admission import (
    AdmissionConfig,
    AdmissionController,
    AdmissionMode,
    QueueOrder,
    ShedReason,
)
from servewise.slo.cost_model import CostModelConfig

from .factories import FakeClock, FakeStep, make_class

# A slow engine whose cost the controller already knows (no steps seen: the prior is the model).
A, B, C = 0.01, 0.01, 0.002  # s per step, s per prompt token, s per decode token
BUDGET = 512
PROMPT = 200  # tokens: 2 s of prefill each
INTERACTIVE = make_class("interactive", ttft_s=5.0, admission_slack=1.0, priority=0)
BATCH = make_class("batch", ttft_s=20.0, admission_slack=3.0, priority=10)


def controller(clock: FakeClock | None = None, **kwargs) -> AdmissionController:
    cost = CostModelConfig(prior_step_overhead_s=A, prior_prefill_s_per_token=B, prior_decode_s_per_token=C)
    return AdmissionController(AdmissionConfig(max_num_batched_tokens=BUDGET, cost_model=cost, **kwargs),
                               clock=clock or FakeClock())


def expected_ttft_s(num_tokens: int, num_running: int = 0) -> float:
    steps = math.ceil(num_tokens / (BUDGET - num_running))
    return steps * (A + C * num_running) + B * num_tokens


def burst(ctl: AdmissionController, n: int, slo=INTERACTIVE, start: int = 0) -> list:
    outcomes = []
    for i in range(start, start + n):
        try:
            outcomes.append(ctl.admit(f"r{i}", PROMPT, slo, num_running=0, num_waiting=i))
        except OverloadedError as e:
            outcomes.append(e)
    return outcomes


def test_prediction_counts_backlog_own_prompt_and_decodes():
    ctl = controller()
    assert ctl.predict(PROMPT, INTERACTIVE, num_running=0).ttft_s == pytest.approx(expected_ttft_s(200))
    ctl.on_admitted("a", 700, INTERACTIVE)
    pred = ctl.predict(PROMPT, INTERACTIVE, num_running=0)
    assert pred.num_prefill_tokens_ahead == 700 and pred.num_steps == 2
    assert pred.ttft_s == pytest.approx(expected_ttft_s(900))
    assert pred.queue_wait_s == pytest.approx(expected_ttft_s(700))
    busy = ctl.predict(PROMPT, INTERACTIVE, num_running=312)  # 200 prefill tokens per step left
    assert busy.num_steps == 5
    assert busy.ttft_s == pytest.approx(expected_ttft_s(900, num_running=312))


def test_burst_first_admitted_then_shed_with_backlog_retry_after():
    ctl = controller()
    outcomes = burst(ctl, 4)
    # 200, 400 tokens → 2.01 s, 4.01 s ≤ 5 s; 600 tokens → 6.02 s > 5 s
    assert [type(o).__name__ for o in outcomes] == ["AdmissionDecision", "AdmissionDecision",
                                                    "OverloadedError", "OverloadedError"]
    shed = outcomes[2]
    assert shed.http_status == 429 and shed.reason == "ttft_slo"
    assert shed.retry_after_s >= 1.0
    assert shed.retry_after_s == pytest.approx(expected_ttft_s(400))  # the 400 queued tokens ahead
    assert "interactive" in shed.message and "6.02 s exceeds 5.00 s" in shed.message
    assert ctl.num_shed[ShedReason.TTFT_SLO] == 2 and ctl.num_admitted == 2


def test_batch_class_tolerates_more():
    ctl = controller()
    burst(ctl, 3)  # two interactive admitted, 400 tokens queued
    admitted = [o for o in burst(ctl, 40, slo=BATCH, start=3) if not isinstance(o, OverloadedError)]
    # batch sheds past 20 s × 3 = 60 s, i.e. ~29 prompts of 200 tokens in all
    assert len(admitted) == 27
    assert ctl.num_queued_prefill_tokens == 29 * PROMPT


def test_first_token_and_finish_free_the_queue():
    ctl = controller()
    burst(ctl, 2)
    with pytest.raises(OverloadedError):
        ctl.admit("late", PROMPT, INTERACTIVE, num_running=0, num_waiting=2)
    ctl.on_first_token("r0")
    ctl.admit("late", PROMPT, INTERACTIVE, num_running=0, num_waiting=2)
    ctl.on_finished("r1")  # failed before its first token
    ctl.on_finished("r0")
    assert ctl.num_queued_prefill_tokens == PROMPT  # only "late" left
    ctl.on_first_token("late")
    ctl.on_finished("late")
    ctl.on_finished("never-admitted")
    assert ctl.num_queued_prefill_tokens == 0
    with pytest.raises(ValueError, match="admitted twice"):
        ctl.on_admitted("x", 1, INTERACTIVE)
        ctl.on_admitted("x", 1, INTERACTIVE)


def test_an_oversized_request_on_an_idle_engine_is_admitted():
    ctl = controller()
    decision = ctl.admit("huge", 2000, INTERACTIVE, num_running=0, num_waiting=0)
    assert decision.admitted and decision.prediction.ttft_s > INTERACTIVE.ttft_s  # waiting would not help it


def test_observe_mode_predicts_but_never_sheds():
    ctl = controller(mode=AdmissionMode.OBSERVE, max_num_waiting_requests=1)
    outcomes = burst(ctl, 10)
    assert all(o.admitted for o in outcomes)
    assert outcomes[5].shed_reason is ShedReason.QUEUE_REQUESTS and outcomes[5].retry_after_s is None
    assert outcomes[5].prediction.ttft_s == pytest.approx(expected_ttft_s(6 * PROMPT))
    assert sum(ctl.num_would_shed.values()) == 9 and not ctl.num_shed
    samples = {(s.name, s.labels.get("reason")): s.value for s in ctl.metric_samples()}
    assert samples[("servewise:admission_would_shed_total", "queue_requests")] == 9


def test_caps():
    ctl = controller(max_num_waiting_requests=3)
    with pytest.raises(OverloadedError) as info:
        ctl.admit("x", 10, INTERACTIVE, num_running=0, num_waiting=3)
    assert info.value.reason == "queue_requests" and info.value.retry_after_s == 1.0
    ctl = controller(max_queued_prefill_tokens=500)
    ctl.admit("a", 400, INTERACTIVE, num_running=0, num_waiting=0)
    with pytest.raises(OverloadedError, match="cap of 500") as info:
        ctl.admit("b", 101, BATCH, num_running=0, num_waiting=1)
    assert info.value.reason == "queue_tokens"
    ctl.admit("c", 100, BATCH, num_running=0, num_waiting=1)


def test_max_queue_wait():
    ctl = controller()
    patient = make_class("patient", ttft_s=1000.0, max_queue_wait_s=3.0)
    ctl.admit("a", PROMPT, patient, num_running=0, num_waiting=0)  # 2.01 s of work queued
    ctl.admit("b", PROMPT, patient, num_running=0, num_waiting=1)
    with pytest.raises(OverloadedError) as info:
        ctl.admit("c", PROMPT, patient, num_running=0, num_waiting=2)  # would wait 4.01 s
    assert info.value.reason == "queue_wait"


def test_priority_order_counts_only_more_urgent_prompts():
    ctl = controller(queue_order=QueueOrder.PRIORITY)
    for i in range(10):
        ctl.on_admitted(f"b{i}", PROMPT, BATCH)
    assert ctl.predict(PROMPT, INTERACTIVE, num_running=0).num_prefill_tokens_ahead == 0
    assert ctl.predict(PROMPT, BATCH, num_running=0).num_prefill_tokens_ahead == 10 * PROMPT
    fcfs = controller()
    fcfs.on_admitted("b", PROMPT, BATCH)
    assert fcfs.predict(PROMPT, INTERACTIVE, num_running=0).num_prefill_tokens_ahead == PROMPT


def test_prediction_error_stats():
    ctl = controller()
    for predicted, actual in [(1.0, 2.0), (3.0, 2.0), (2.0, 2.0), (2.5, 2.0)] + [(1.0, 1.0)] * 6:
        ctl.observe_ttft(predicted, actual)
    s = ctl.errors.summary()
    assert s.num_samples == 10
    assert s.mean_abs_error_s == pytest.approx(2.5 / 10)
    assert s.mean_signed_error_s == pytest.approx(0.5 / 10)
    assert s.p90_abs_error_s == pytest.approx(1.0)  # 9th of 10 sorted: 0×6, 0.5, 1, 1 → 1
    samples = {s.labels.get("stat"): s.value for s in ctl.metric_samples()
               if s.name == "servewise:admission_predicted_ttft_error_seconds"}
    assert samples == {"mean_abs": 0.25, "mean_signed": pytest.approx(0.05), "p90_abs": 1.0}


def test_first_token_scores_the_admission_prediction():
    clock = FakeClock()
    ctl = controller(clock)
    decision = ctl.admit("a", PROMPT, INTERACTIVE, num_running=0, num_waiting=0)
    ctl.on_first_token("a", ttft_s=decision.prediction.ttft_s + 0.5)
    ctl.admit("b", PROMPT, INTERACTIVE, num_running=0, num_waiting=0)
    clock.advance(1.0)  # no measurement given: time since admission stands in
    ctl.on_first_token("b")
    s = ctl.errors.summary()
    assert s.num_samples == 2
    assert s.mean_signed_error_s == pytest.approx((-0.5 + (expected_ttft_s(200) - 1.0)) / 2)


def test_learns_from_engine_steps():
    ctl = controller()
    steps = [FakeStep(0.005 + 0.001 * p, p, p, 1, float(i)) for i, p in enumerate([64, 128, 256, 512] * 100)]
    assert ctl.observe_steps(steps) == 400
    assert ctl.predict(100, INTERACTIVE, num_running=0).ttft_s == pytest.approx(0.105, rel=0.05)
    snap = ctl.snapshot()
    assert snap["cost_model"]["num_steps_observed"] == 400 and snap["mode"] == "enforce"


def test_config_from_scheduler_and_validation():
    config = AdmissionConfig.for_scheduler(SchedulerConfig(max_num_batched_tokens=2048, queue_policy="priority"))
    assert config.max_num_batched_tokens == 2048 and config.queue_order is QueueOrder.PRIORITY
    with pytest.raises(ValueError):
        AdmissionConfig(min_retry_after_s=0.5)
    with pytest.raises(ValueError):
        AdmissionConfig(max_queued_prefill_tokens=0)


def test_steps_slower_than_the_tpot_target_shed_new_requests():
    clock = FakeClock()
    ctl = controller(clock)
    chat = make_class("chat", ttft_s=5.0, tpot_s=0.1, admission_slack=1.0)
    fast = [FakeStep(0.05, 20, 0, 20, clock.now_s - 2.0 + 0.05 * i) for i in range(20)]
    ctl.observe_steps(fast)  # 50 ms steps: room for one more sequence under 90 ms
    assert ctl.decide(PROMPT, chat, num_running=20, num_waiting=0).admitted
    slow = [FakeStep(0.12, 40, 0, 40, clock.now_s - 1.0 + 0.01 * i) for i in range(50)]
    ctl.observe_steps(slow)  # the last 3 s now average ~0.1 s per step: over the 90 ms guard
    decision = ctl.decide(PROMPT, chat, num_running=40, num_waiting=0)
    assert not decision.admitted and decision.shed_reason is ShedReason.TPOT_SLO
    assert decision.retry_after_s >= 1 and "time per output token" in decision.message
    assert ctl.decide(PROMPT, INTERACTIVE, num_running=40, num_waiting=0).admitted  # no TPOT target: admitted
    clock.advance(10)  # the window has passed with no steps: nothing to hold against new requests
    assert ctl.decide(PROMPT, chat, num_running=0, num_waiting=0).admitted


def test_after_a_burst_is_dropped_the_engine_admits_again_at_once():
    clock = FakeClock()
    ctl = controller(clock)
    chat = make_class("chat", ttft_s=5.0, tpot_s=0.1, admission_slack=1.0)
    # a burst: 40 streams decoding, 120 ms steps (the fit learns ~3 ms per decode)
    burst_steps = [FakeStep(0.01 + 0.0027 * 40, 40, 0, 40, clock.now_s - 2.0 + 0.12 * i) for i in range(16)]
    ctl.observe_steps(burst_steps)
    assert not ctl.decide(PROMPT, chat, num_running=40, num_waiting=0).admitted
    # the streams were dropped a moment ago: the last 3 s still average 120 ms per step, but the next
    # steps decode 2 sequences, which the cost model puts far below the 90 ms guard
    assert ctl.recent_step_s() == pytest.approx(0.118)
    decision = ctl.decide(PROMPT, chat, num_running=2, num_waiting=0)
    assert decision.admitted and decision.shed_reason is None
    assert ctl.decide(PROMPT, chat, num_running=0, num_waiting=0).admitted


def test_ttft_prediction_follows_the_engine_step_budget():
    ctl = controller()
    chat = make_class("chat", ttft_s=50.0, tpot_s=0.1, admission_slack=1.0)
    assert ctl.step_target_s() is None
    ctl.on_admitted("streaming", 10, chat)
    ctl.on_first_token("streaming")
    assert ctl.step_target_s() == pytest.approx(0.09)  # tightest TPOT in flight × margin
    # 20 decodes cost 10 + 40 ms: the 40 ms left hold 4 prompt tokens (10 ms each), below the floor of 32
    pred = ctl.predict(PROMPT, chat, num_running=20)
    assert pred.num_steps == math.ceil(PROMPT / 32)
    fixed = controller(slo_step_budget=False)
    fixed.on_admitted("streaming", 10, chat)
    assert fixed.predict(PROMPT, chat, num_running=20).num_steps == 1
    ctl.on_finished("streaming")
    assert ctl.step_target_s() is None and ctl.predict(PROMPT, chat, num_running=20).num_steps == 1


def test_a_target_out_of_reach_even_for_one_sequence_sheds_nobody_on_tpot():
    slow = AdmissionController(AdmissionConfig(max_num_batched_tokens=BUDGET, cost_model=CostModelConfig(
        prior_step_overhead_s=0.3, prior_decode_s_per_token=0.01)), clock=FakeClock())
    chat = make_class("chat", ttft_s=50.0, tpot_s=0.1)
    assert slow.decide(PROMPT, chat, num_running=5, num_waiting=0).admitted  # waiting would not help it
