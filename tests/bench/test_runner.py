"""Load shapes end to end against the fake server: counts, concurrency, warm-up, goodput."""

import math
import statistics

import pytest

from servewise.bench.distributions import parse_length
from servewise.bench.fake_server import FakeBehaviour
from servewise.bench.schedule import sweep
from servewise.bench.slo import SloSpec

from .factories import make_config, run_with_server, scripted_config, scripted_dataset


def test_open_loop_sends_on_schedule():
    result, server = run_with_server(lambda url: make_config(
        url, points=sweep(rates=[50.0, 100.0]), load={"num_requests": 20, "warmup_requests": 3, "seed": 5}))
    assert [p.load.label for p in result.points] == ["rate=50/s", "rate=100/s"]
    for point in result.points:
        assert len(point.records) == 23 and point.summary.num_requests == 20
        assert [r.index for r in point.records] == list(range(23))
        assert [r.warmup for r in point.records] == [True] * 3 + [False] * 20
        assert statistics.median(r.send_s - r.scheduled_s for r in point.records) < 0.005
    assert len(server.received) == 46
    assert result.points[1].started_s > result.points[0].started_s


def test_the_same_seed_gives_the_same_schedule_and_prompts():
    def run(seed):
        result, server = run_with_server(lambda url: make_config(
            url, points=sweep(rates=[200.0]), load={"num_requests": 8, "seed": seed},
            workload={"input_len": parse_length("uniform:5,50")}))
        return [r.scheduled_s for r in result.points[0].records], sorted(str(b["messages"]) for b in server.received)

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_closed_loop_keeps_exactly_the_concurrency_in_flight():
    result, _ = run_with_server(lambda url: make_config(url, points=sweep(concurrencies=[1, 4]),
                                                        load={"num_requests": 12}),
                                FakeBehaviour(ttft_s=0.03, num_tokens=2))
    assert [p.summary.peak_in_flight for p in result.points] == [1, 4]
    assert [p.summary.num_ok for p in result.points] == [12, 12]


def test_closed_loop_by_duration_stops_sending_when_time_is_up():
    result, _ = run_with_server(lambda url: make_config(
        url, points=sweep(concurrencies=[2]), load={"num_requests": None, "duration_s": 0.5, "warmup_s": 0.2,
                                                    "prompt_pool_size": 5}),
        FakeBehaviour(ttft_s=0.05, num_tokens=1))
    records = result.points[0].records
    assert max(r.send_s for r in records) < 0.7 + 0.01
    assert all(r.warmup == (r.send_s < 0.2) for r in records)
    assert 14 <= len(records) <= 28  # 2 in flight, ~50 ms each, for 0.7 s


def test_max_throughput_sends_all_at_once_and_max_concurrency_caps_it():
    result, _ = run_with_server(lambda url: make_config(url, points=sweep(rates=[math.inf]),
                                                        load={"num_requests": 10}),
                                FakeBehaviour(ttft_s=0.05, num_tokens=1))
    assert result.points[0].summary.peak_in_flight == 10
    result, _ = run_with_server(lambda url: make_config(url, points=sweep(rates=[math.inf]),
                                                        load={"num_requests": 10, "max_concurrency": 3}),
                                FakeBehaviour(ttft_s=0.05, num_tokens=1))
    summary = result.points[0].summary
    assert summary.peak_in_flight == 3 and summary.num_ok == 10
    assert summary.send_lag_p99_s > 0.05  # the cap held requests back from their schedule


GOODPUT_SCRIPT = [
    {"ttft_s": 0.01, "itl_s": 0.005, "num_tokens": 4},  # meets both SLOs
    {"ttft_s": 0.01, "itl_s": 0.005, "num_tokens": 4},  # meets both SLOs
    {"ttft_s": 0.01, "num_tokens": 1},  # one token: no TPOT, meets
    {"ttft_s": 0.25, "num_tokens": 2},  # TTFT over 100 ms
    {"ttft_s": 0.01, "itl_s": 0.08, "num_tokens": 3},  # TPOT over 40 ms
    {"status": 429, "retry_after": "1"},  # shed: never good
]


def test_goodput_is_exact_for_a_scripted_mix(tmp_path):
    dataset = scripted_dataset(tmp_path, GOODPUT_SCRIPT)
    result, _ = run_with_server(lambda url: scripted_config(url, dataset, len(GOODPUT_SCRIPT),
                                                            slo=SloSpec(ttft_s=0.1, tpot_s=0.04)))
    summary = result.points[0].summary
    assert summary.num_ok == 5
    assert summary.slo_attainment_pct == pytest.approx(100 * 3 / 6)
    assert summary.goodput_per_s == pytest.approx(3 / summary.duration_s)
    assert summary.request_throughput_per_s == pytest.approx(5 / summary.duration_s)
