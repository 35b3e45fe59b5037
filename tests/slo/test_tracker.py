import json
import tracemalloc

import pytest

from servewise.slo.tracker import Outcome, SLOTracker, TrackerConfig

from .factories import FakeClock, make_config

START_S = 1200.0  # a multiple of every bucket width, so expiry times are round


def scripted(tracker: SLOTracker, slo_class: str = "interactive") -> None:
    """6 good, 2 too slow, 1 server error, 1 shed, 3 client errors."""
    for _ in range(6):
        tracker.record(slo_class, Outcome.SUCCESS, ttft_s=0.5, tpot_s=0.05, e2e_s=3.0)
    tracker.record(slo_class, Outcome.SUCCESS, ttft_s=2.0, tpot_s=0.05, e2e_s=4.0)
    tracker.record(slo_class, Outcome.SUCCESS, ttft_s=0.5, tpot_s=0.5, e2e_s=9.0)
    tracker.record(slo_class, Outcome.SERVER_ERROR)
    tracker.record(slo_class, Outcome.SHED)
    for _ in range(3):
        tracker.record(slo_class, Outcome.CLIENT_ERROR)


@pytest.fixture
def clock():
    return FakeClock(START_S)


def test_scripted_sequence_exact(clock):
    tracker = SLOTracker(make_config(), clock=clock)  # interactive: ttft ≤ 1 s, tpot ≤ 100 ms, 99% available
    scripted(tracker)
    clock.advance(10.0)
    s = tracker.window_stats("interactive", "1m")
    c = s.counts
    assert (c.num_success, c.num_met, c.num_server_error, c.num_shed, c.num_client_error) == (8, 6, 1, 1, 3)
    assert s.attainment_ratio == 6 / 8
    assert s.span_s == 10.0  # the tracker is 10 s old
    assert s.goodput_rps == 6 / 10
    assert s.bad_ratio == 4 / 10  # 1 error + 1 shed + 2 slow, over 10 eligible (client errors left out)
    assert s.burn_rate == pytest.approx(40.0)  # 40% bad against 1% allowed
    assert s.error_budget_remaining_ratio == pytest.approx(-39.0)
    assert tracker.window_stats("batch", "1m").attainment_ratio is None


def test_shed_can_be_left_out_of_the_budget(clock):
    tracker = SLOTracker(make_config(), TrackerConfig(shed_counts_as_bad=False), clock=clock)
    scripted(tracker)
    s = tracker.window_stats("interactive", "5m")
    assert s.bad_ratio == 3 / 9


def test_good_traffic_keeps_the_budget(clock):
    tracker = SLOTracker(make_config(), clock=clock)
    for _ in range(199):
        tracker.record("interactive", Outcome.SUCCESS, ttft_s=0.1, tpot_s=0.01)
    tracker.record("interactive", Outcome.SERVER_ERROR)
    s = tracker.window_stats("interactive", "1h")
    assert s.burn_rate == pytest.approx(0.5)  # 0.5% bad of a 1% budget
    assert s.error_budget_remaining_ratio == pytest.approx(0.5)
    empty = tracker.window_stats("batch", "1h")
    assert (empty.bad_ratio, empty.burn_rate, empty.error_budget_remaining_ratio) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize("window, expires_after_s", [("1m", 60.0), ("5m", 300.0), ("1h", 3600.0)])
def test_windows_expire(clock, window, expires_after_s):
    tracker = SLOTracker(make_config(), clock=clock)
    tracker.record("interactive", Outcome.SUCCESS, ttft_s=0.1)
    clock.advance(expires_after_s - 0.01)
    assert tracker.window_stats("interactive", window).counts.num_success == 1
    clock.advance(0.01)
    assert tracker.window_stats("interactive", window).counts.num_success == 0


def test_window_slides_bucket_by_bucket(clock):
    tracker = SLOTracker(make_config(), clock=clock)
    for _ in range(120):  # one good request per second for two minutes
        tracker.record("interactive", Outcome.SUCCESS, ttft_s=0.1)
        clock.advance(1.0)
    clock.advance(-0.5)  # now = START + 119.5 s
    one_minute = tracker.window_stats("interactive", "1m")
    assert one_minute.counts.num_success == 60  # t = 60..119
    assert one_minute.span_s == pytest.approx(59.5)
    assert one_minute.goodput_rps == pytest.approx(60 / 59.5)
    assert tracker.window_stats("interactive", "5m").counts.num_success == 120


def test_ttft_percentile_and_objective(clock):
    tracker = SLOTracker(make_config(), clock=clock)
    for i in range(1, 101):
        tracker.record("interactive", Outcome.SUCCESS, ttft_s=i * 0.01)  # 10 ms .. 1 s
    s = tracker.window_stats("interactive", "1m")
    assert s.ttft_percentile == 99.0 and s.ttft_target_s == 1.0
    assert s.ttft_percentile_s == pytest.approx(0.99, rel=0.2)
    assert s.ttft_target_met is True  # all 100 within 1 s
    tracker.record("interactive", Outcome.SUCCESS, ttft_s=5.0)
    tracker.record("interactive", Outcome.SUCCESS, ttft_s=5.0)
    assert tracker.window_stats("interactive", "1m").ttft_target_met is False  # 100/102 < 99%
    assert tracker.window_stats("batch", "1m").ttft_target_met is None


def test_snapshot_is_json_ready(clock):
    tracker = SLOTracker(make_config(), clock=clock)
    scripted(tracker)
    snap = json.loads(json.dumps(tracker.snapshot()))
    one_minute = snap["classes"]["interactive"]["windows"]["1m"]
    assert one_minute["attainment_ratio"] == 0.75
    assert one_minute["counts"]["num_client_error"] == 3
    assert snap["classes"]["interactive"]["targets"]["availability"] == 0.99
    assert set(snap["classes"]["batch"]["windows"]) == {"1m", "5m", "1h"}


def test_metric_samples(clock):
    tracker = SLOTracker(make_config(), clock=clock)
    scripted(tracker)
    clock.advance(10.0)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in tracker.metric_samples()}
    assert samples[("servewise:slo_attainment_ratio", (("slo_class", "interactive"), ("window", "5m")))] == 0.75
    assert samples[("servewise:goodput_requests_per_second", (("slo_class", "interactive"),))] == 0.6
    assert samples[("servewise:error_budget_remaining_ratio", (("slo_class", "interactive"),))] == pytest.approx(-39)
    assert samples[("servewise:error_budget_remaining_ratio", (("slo_class", "batch"),))] == 1.0
    # nothing served for batch: no attainment sample rather than a made-up value
    assert not any(name == "servewise:slo_attainment_ratio" and dict(labels)["slo_class"] == "batch"
                   for name, labels in samples)


def test_outcome_may_be_its_label(clock):
    tracker = SLOTracker(make_config(), clock=clock)
    assert tracker.record("interactive", "success", ttft_s=0.1) is True
    assert tracker.window_stats("interactive", "1m").counts.num_success == 1


def test_unknown_class_is_a_bug(clock):
    with pytest.raises(ValueError, match="unknown SLO class"):
        SLOTracker(make_config(), clock=clock).record("gold", Outcome.SUCCESS)


def test_memory_is_bounded_whatever_the_rate(clock):
    tracker = SLOTracker(make_config(), clock=clock)

    def two_hours(per_second: int) -> None:
        for _ in range(7200):
            for i in range(per_second):
                tracker.record("interactive", Outcome.SUCCESS, ttft_s=0.001 * (1 + i), tpot_s=0.01)
            clock.advance(1.0)

    two_hours(1)  # every bucket of every window exists now
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    two_hours(3)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 20_000  # bytes; 21,600 more requests were recorded
