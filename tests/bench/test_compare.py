from servewise.bench.compare import compare_results, unmatched_points
from servewise.bench.schedule import sweep

from .factories import make_record, make_result


def result_with(ttft_s, num_requests, rates):
    return make_result({p: [make_record(i, send_s=float(i), ttft_s=ttft_s, token_gaps_s=(0.01,))
                            for i in range(num_requests)] for p in sweep(rates=rates)})


def test_rows_pair_points_by_label_with_ratios_and_verdicts():
    a, b = result_with(0.2, 10, [1.0, 2.0]), result_with(0.1, 10, [2.0, 4.0])
    rows = {(r.point, r.metric.name): r for r in compare_results(a, b)}
    assert {point for point, _ in rows} == {"rate=2/s"}
    ttft = rows[("rate=2/s", "TTFT p50 ms")]
    assert (ttft.a, ttft.b, ttft.ratio, ttft.verdict) == (0.2, 0.1, 0.5, "better")
    assert ttft.cells() == ["rate=2/s", "TTFT p50 ms", "200", "100", "0.50x", "better"]
    throughput = rows[("rate=2/s", "req/s")]
    assert throughput.ratio is not None and throughput.ratio > 1 and throughput.verdict == "better"
    assert rows[("rate=2/s", "failed")].ratio is None  # 0 failed on both sides
    assert unmatched_points(a, b) == ["only in A: rate=1/s", "only in B: rate=4/s"]


def test_disjoint_sweeps_of_equal_length_pair_in_order():
    rows = compare_results(result_with(0.2, 4, [1.0]), result_with(0.2, 4, [3.0]))
    assert rows[0].point == "rate=1/s vs rate=3/s"
