"""Rollouts, pure: the spec, the statistical gate, the state machine, the sticky split, the shadow report."""

from __future__ import annotations

import pytest

from servewise.config import ConfigError
from servewise.fleet.rollout_controller import Action, RolloutController, RolloutPhase, RolloutState
from servewise.fleet.rollout_gate import GateDecision, VersionWindow, binomial_tail_below, evaluate, worse_by
from servewise.fleet.rollout_spec import (
    AnalysisConfig,
    RolloutMode,
    rollout_spec_from_dict,
    rollout_spec_from_text,
)
from servewise.fleet.rollout_window import Finished, RequestOutcome, RolloutRecorder, percentile
from servewise.fleet.shadow import ShadowComparison, ShadowPair, agreement, on_candidate

CFG = AnalysisConfig(window_s=10, confidence=0.95, attainment_tolerance=0.02, error_tolerance=0.01,
                     shed_tolerance=0.05, p99_ratio_tolerance=1.25, p99_min_delta_s=0.05, min_samples=20)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def good(n: int, ttft: float = 0.2, tpot: float = 0.05) -> VersionWindow:
    """n served requests, every one at these latencies."""
    return VersionWindow(num_requests=n, num_met=n, ttft_p99_s=ttft, tpot_p99_s=tpot,
                         ttft_samples_s=(ttft,) * n, tpot_samples_s=(tpot,) * n)


# -- spec -----------------------------------------------------------------------------------
def test_a_spec_parses_with_defaults_and_round_trips():
    spec = rollout_spec_from_text("""
mode: canary
candidate: {engine_args: ["--linear-backend", "fp32"], replicas: 2}
steps: [10, 50, 100]
step_min_duration: 30s
analysis: {window: 5s, confidence: 0.9}
""")
    assert spec.steps == (10, 50, 100) and spec.step_min_duration_s == 30 and spec.analysis.window_s == 5
    assert spec.candidate.engine_args == ("--linear-backend", "fp32") and spec.candidate.replicas == 2
    from servewise.fleet.rollout_spec import spec_to_dict
    assert rollout_spec_from_dict(spec_to_dict(spec)) == spec
    assert rollout_spec_from_text("mode: shadow").mode is RolloutMode.SHADOW


@pytest.mark.parametrize("text, message", [
    ("steps: [1, 5, 50]", "end at 100"),
    ("steps: [100]", "step below 100"),
    ("steps: [5, 1, 100]", "increase"),
    ("steps: [0, 100]", "share in"),
    ("steps: [50, 150]", "share in"),
    ("shadow: {sample: 2}", "shadow.sample"),
    ("mode: blue-green", "canary or shadow"),
    ("candidate: {replicas: 0}", "replicas"),
    ("analysis: {confidence: 1.5}", "confidence"),
    ("speed: fast", "unknown field"),
    ("step_min_duration: soon", "step_min_duration"),
    ("[1, 2", "not valid YAML"),
])
def test_bad_specs_are_refused_naming_the_field(text, message):
    with pytest.raises(ConfigError, match=message):
        rollout_spec_from_text(text)


# -- gate -----------------------------------------------------------------------------------
def test_the_proportion_test_needs_both_the_tolerance_and_the_evidence():
    assert worse_by(0, 1000, 50, 1000, 0.01, 0.95)[0]  # 5 % errors vs none: worse
    assert not worse_by(0, 1000, 5, 1000, 0.01, 0.95)[0]  # 0.5 %: inside the tolerance
    assert not worse_by(0, 1000, 1, 5, 0.01, 0.95)[0]  # 1 of 5: not enough evidence
    assert not worse_by(0, 1, 1, 1, 0.02, 0.95)[0]  # all-or-nothing on one request is never certain
    assert not worse_by(10, 100, 10, 100, 0.0, 0.95)[0]


def test_gate_rolls_back_on_errors_attainment_and_p99s():
    base = good(400)
    failing = VersionWindow(num_requests=100, num_met=90, num_errors=10, ttft_p99_s=0.2, tpot_p99_s=0.05)
    r = evaluate(base, failing, CFG, step_age_s=5, step_min_duration_s=60, step_min_requests=50)
    assert r.decision is GateDecision.ROLLBACK and any("errors" in x for x in r.reasons)
    slow = good(40, tpot=0.35)  # +300 ms per step
    r = evaluate(base, slow, CFG, step_age_s=5, step_min_duration_s=60, step_min_requests=50)
    assert r.decision is GateDecision.ROLLBACK and any(x.startswith("TPOT: 40 of 40") for x in r.reasons)
    jitter = good(100, tpot=0.08)  # 1.6× but only +30 ms: noise on a fast model, not a regression
    assert evaluate(base, jitter, CFG, step_age_s=5, step_min_duration_s=60,
                    step_min_requests=50).decision is GateDecision.EXTEND
    missing = VersionWindow(num_requests=100, num_met=70, ttft_p99_s=0.2, tpot_p99_s=0.05)
    r = evaluate(base, missing, CFG, step_age_s=5, step_min_duration_s=60, step_min_requests=50)
    assert r.decision is GateDecision.ROLLBACK and any("missed SLO" in x for x in r.reasons)


def test_one_slow_request_is_not_a_slow_candidate_but_a_slow_tail_is():
    # An identical candidate was rolled back when p99s were compared: over 20 requests a p99 is the
    # slowest one (here a new replica's first request, 3× the baseline's p99).
    base = good(200, ttft=0.18)
    one_cold = VersionWindow(num_requests=20, num_met=20, ttft_p99_s=0.62, tpot_p99_s=0.05,
                             ttft_samples_s=(0.62,) + (0.1,) * 19, tpot_samples_s=(0.05,) * 20)
    kwargs = dict(step_age_s=61, step_min_duration_s=60, step_min_requests=20)
    assert evaluate(base, one_cold, CFG, **kwargs).decision is GateDecision.PROMOTE
    three_slow = VersionWindow(num_requests=20, num_met=20, ttft_p99_s=0.62, tpot_p99_s=0.05,
                               ttft_samples_s=(0.62,) * 3 + (0.1,) * 17, tpot_samples_s=(0.05,) * 20)
    r = evaluate(base, three_slow, CFG, **kwargs)
    assert r.decision is GateDecision.ROLLBACK and "3 of 20" in r.reasons[0]


def test_binomial_tail():
    assert not binomial_tail_below(20, 1, 0.01, 0.05)  # P(X ≥ 1) = 0.18
    assert binomial_tail_below(20, 2, 0.01, 0.05)  # P(X ≥ 2) = 0.017
    assert not binomial_tail_below(20, 0, 0.01, 0.05)
    assert not binomial_tail_below(100_000, 1_050, 0.01, 0.05)  # 1.05 %: within the noise of 100k
    assert binomial_tail_below(100_000, 1_200, 0.01, 0.05)


def test_gate_extends_until_the_minimums_then_promotes():
    base = good(400)
    r = evaluate(base, good(10), CFG, step_age_s=100, step_min_duration_s=60, step_min_requests=50)
    assert r.decision is GateDecision.EXTEND and "10 of 20" in r.reasons[0] and "10 of 50" in r.reasons[1]
    r = evaluate(base, good(60), CFG, step_age_s=30, step_min_duration_s=60, step_min_requests=50)
    assert r.decision is GateDecision.EXTEND and "30 s old" in r.reasons[0]
    r = evaluate(base, good(60), CFG, step_age_s=61, step_min_duration_s=60, step_min_requests=50)
    assert r.decision is GateDecision.PROMOTE
    # nothing is judged, either way, on fewer than min_samples requests
    r = evaluate(base, good(5, tpot=1.0), CFG, step_age_s=61, step_min_duration_s=60, step_min_requests=5)
    assert r.decision is GateDecision.EXTEND
    one_bad = VersionWindow(num_requests=1, num_errors=1)
    assert evaluate(good(1), one_bad, CFG, step_age_s=61, step_min_duration_s=0,
                    step_min_requests=0).decision is GateDecision.EXTEND


def test_the_100_percent_step_judges_slo_figures_not_load_bound_p99s():
    # at 100 % the candidate carries the whole load; the baseline's previous step carried a share
    loaded = good(100, ttft=0.6)  # 3× the p99 of the reference, yet every request met its SLO
    kwargs = dict(step_age_s=61, step_min_duration_s=60, step_min_requests=50)
    assert evaluate(good(400), loaded, CFG, **kwargs).decision is GateDecision.ROLLBACK
    assert evaluate(good(400), loaded, CFG, compare_p99=False, **kwargs).decision is GateDecision.PROMOTE
    missing = VersionWindow(num_requests=100, num_met=70, ttft_p99_s=0.6, tpot_p99_s=0.05)
    assert evaluate(good(400), missing, CFG, compare_p99=False, **kwargs).decision is GateDecision.ROLLBACK
    c, clock = canary((50, 100))
    clock.t += 11
    assert c.on_window(good(200), good(30)) is Action.NEXT_STEP and c.state.share == 1.0
    clock.t += 11
    assert c.on_window(good(200), good(30, ttft=0.9)) is Action.PROMOTE_CANDIDATE


# -- state machine --------------------------------------------------------------------------
def canary(steps=(10, 50, 100)):
    spec = rollout_spec_from_dict({"steps": list(steps), "step_min_duration": 10, "step_min_requests": 20})
    clock = Clock()
    return RolloutController.start("r1", spec, "v1", "v2", clock), clock


def test_a_good_canary_climbs_every_step_to_100_then_becomes_the_baseline():
    c, clock = canary()
    assert c.state.share == 0.1
    clock.t += 11
    assert c.on_window(good(200), good(30)) is Action.NEXT_STEP and c.state.share == 0.5
    assert c.on_window(good(200), good(30)) is Action.NONE  # a new step starts its clock over
    clock.t += 11
    assert c.on_window(good(200), good(30)) is Action.NEXT_STEP and c.state.share == 1.0
    clock.t += 11
    assert c.on_window(good(200), good(30)) is Action.PROMOTE_CANDIDATE
    assert c.state.phase is RolloutPhase.PROMOTED and c.state.share == 1.0
    assert [d["decision"] for d in c.state.decisions] == ["start", "promote", "extend", "promote", "promote"]


def test_a_bad_canary_is_rolled_back_at_once_and_gets_nothing_more():
    c, clock = canary()
    action = c.on_window(good(200), VersionWindow(num_requests=30, num_met=20, num_errors=10))
    assert action is Action.REMOVE_CANDIDATE and c.state.phase is RolloutPhase.ROLLED_BACK and c.state.share == 0
    assert c.on_window(good(200), good(30)) is Action.NONE


def test_operator_commands():
    c, clock = canary()
    assert c.pause() is Action.NONE and c.state.phase is RolloutPhase.PAUSED
    clock.t += 100
    assert c.on_window(good(200), VersionWindow(num_requests=30, num_errors=30)) is Action.NONE  # paused: no gate
    assert c.resume() is Action.NEXT_STEP and c.state.phase is RolloutPhase.RUNNING
    assert c.promote() is Action.NEXT_STEP and c.state.share == 0.5
    assert c.abort() is Action.REMOVE_CANDIDATE and c.state.phase is RolloutPhase.ABORTED
    assert c.abort() is Action.NONE and c.promote() is Action.NONE


def test_state_survives_a_round_trip_through_the_store():
    c, clock = canary()
    clock.t += 11
    c.on_window(good(200), good(30))
    restored = RolloutController(RolloutState.from_dict(c.state.to_dict()), clock)
    assert restored.state.to_dict() == c.state.to_dict() and restored.state.share == 0.5


def test_a_shadow_run_completes_after_its_duration_and_never_takes_traffic():
    spec = rollout_spec_from_dict({"mode": "shadow", "shadow": {"sample": 0.2, "duration": 30}})
    clock = Clock()
    c = RolloutController.start("s1", spec, "v1", "v2", clock)
    assert c.state.share == 0 and c.state.shadow_sample == 0.2
    clock.t += 29
    assert c.on_shadow_tick() is Action.NONE
    clock.t += 2
    assert c.on_shadow_tick() is Action.REMOVE_CANDIDATE and c.state.phase is RolloutPhase.COMPLETED
    assert c.state.shadow_sample == 0


# -- split, recorder, shadow ----------------------------------------------------------------
def test_the_split_is_sticky_proportional_and_monotone():
    sessions = [f"user-{i}" for i in range(4000)]
    at_5 = {s for s in sessions if on_candidate(s, "r1", 0.05)}
    at_25 = {s for s in sessions if on_candidate(s, "r1", 0.25)}
    assert 0.03 < len(at_5) / 4000 < 0.07 and 0.22 < len(at_25) / 4000 < 0.28
    assert at_5 <= at_25  # nobody flips back to the baseline as the share grows
    assert all(on_candidate(s, "r1", 0.05) == (s in at_5) for s in sessions[:100])
    assert {s for s in sessions if on_candidate(s, "r2", 0.05)} != at_5  # a new rollout, a new draw


def test_the_recorder_folds_a_step_per_version():
    rec = RolloutRecorder()
    rec.reset(10.0)
    rec.record(Finished(9.0, "v2", RequestOutcome.ERROR, False, None, None))  # before the step: ignored
    for i in range(10):
        rec.record(Finished(11.0 + i, "v2", RequestOutcome.SERVED, i < 8, 0.1 * (i + 1), 0.05))
    rec.record(Finished(20.0, "v2", RequestOutcome.SHED, False, None, None))
    w = rec.window("v2")
    assert (w.num_requests, w.num_met, w.num_shed, w.num_errors) == (11, 8, 1, 0)
    assert w.ttft_p99_s == pytest.approx(1.0) and rec.window("v1").num_requests == 0
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([], 99) is None


def test_the_shadow_report_compares_greedy_tokens_and_sampled_lengths():
    cmp = ShadowComparison()
    cmp.add(ShadowPair(True, [1, 2, 3], [1, 2, 3], 0.1, 0.12, 0.05, 0.05))
    cmp.add(ShadowPair(True, [1, 2, 3, 4], [1, 2, 9, 9], 0.1, 0.12, 0.05, 0.05))
    cmp.add(ShadowPair(False, [5] * 10, [6] * 20, 0.1, 0.1, 0.05, 0.05))
    cmp.add(ShadowPair(True, [1], [], None, None, None, None, candidate_error=True))
    report = cmp.report()
    assert report["greedy"]["exact_match_rate"] == 0.5 and report["greedy"]["token_agreement"] == 0.75
    assert report["sampled"]["candidate_output_len"]["mean"] == 20 and report["candidate_error_rate"] == 0.25
    assert agreement([], []) == 1.0 and agreement([1], [2]) == 0.0
