import pytest

from servewise.bench.metrics import LatencyStats, peak_in_flight, summarize
from servewise.bench.records import Outcome
from servewise.bench.slo import SloSpec

from .factories import make_record


def test_latency_stats():
    stats = LatencyStats.of([float(x) for x in range(1, 101)])
    assert stats.count == 100 and stats.mean_s == 50.5 and stats.max_s == 100.0
    assert stats.p50_s == pytest.approx(50.5) and stats.p99_s == pytest.approx(99.01)
    assert LatencyStats.of([]) == LatencyStats(0)


def test_tpot_is_time_after_the_first_token_per_further_token():
    record = make_record(ttft_s=0.1, token_gaps_s=(0.01, 0.03))
    assert record.tpot_s == pytest.approx(0.02)
    assert record.itls_s == pytest.approx([0.01, 0.03])
    record.num_output_tokens = 5  # usage says 5 tokens in 3 chunks
    assert record.tpot_s == pytest.approx(0.04 / 4)
    assert make_record(token_gaps_s=()).tpot_s is None


def test_summary_counts_rates_and_goodput():
    records = [
        make_record(0, send_s=0.0, ttft_s=0.1, token_gaps_s=(0.01,), warmup=True),
        make_record(1, send_s=1.0, ttft_s=0.1, token_gaps_s=(0.01, 0.01)),  # meets the SLO
        make_record(2, send_s=1.5, ttft_s=0.5, token_gaps_s=(0.01,)),  # ttft too slow
        make_record(3, send_s=2.0, outcome=Outcome.SHED, ttft_s=None, retry_after="1", e2e_s=0.01),
        make_record(4, send_s=2.5, outcome=Outcome.INCOMPLETE, ttft_s=0.1, http_status=200, e2e_s=0.5),
    ]
    summary = summarize(records, SloSpec(ttft_s=0.2))
    assert summary.num_requests == 4 and summary.num_warmup_requests == 1
    assert summary.outcomes["ok"] == 2 and summary.outcomes["shed"] == 1 and summary.outcomes["incomplete"] == 1
    assert summary.num_shed_with_retry_after == 1 and summary.num_lost == 1
    assert summary.duration_s == pytest.approx(3.0 - 1.0)  # first measured send → last end (2.5 + 0.5)
    assert summary.request_throughput_per_s == pytest.approx(2 / 2.0)
    assert summary.output_tokens_per_s == pytest.approx((3 + 2) / 2.0)
    assert summary.input_tokens_per_s == pytest.approx(20 / 2.0)
    assert summary.goodput_per_s == pytest.approx(1 / 2.0)
    assert summary.slo_attainment_pct == pytest.approx(25.0)
    assert summary.ttft.count == 2 and summary.itl.count == 3
    assert summarize(records, SloSpec()).goodput_per_s is None


def test_peak_in_flight_counts_overlaps_only():
    back_to_back = [make_record(i, send_s=float(i), ttft_s=0.5, token_gaps_s=(0.5,)) for i in range(3)]
    assert peak_in_flight(back_to_back) == 1
    overlapping = [make_record(i, send_s=0.1 * i, ttft_s=0.5, token_gaps_s=(0.5,)) for i in range(5)]
    assert peak_in_flight(overlapping) == 5
