"""--output-dir: results.json, report.md and valid PNG charts."""

from servewise.bench.output import write_outputs
from servewise.bench.overload import check_overload
from servewise.bench.records import Outcome
from servewise.bench.schedule import sweep
from servewise.bench.slo import SloSpec

from .factories import make_record, make_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHARTS = ("latency_vs_throughput.png", "ttft_cdf.png", "itl_cdf.png", "timeline.png")


def sweep_result():
    slo = SloSpec(ttft_s=0.2, tpot_s=0.05)
    points = {}
    for i, point in enumerate(sweep(rates=[1.0, 2.0, 4.0])):
        records = [make_record(j, send_s=0.3 * j, ttft_s=0.05 * (i + 1) + 0.01 * j, token_gaps_s=(0.02,) * 5,
                               kind="long" if j % 3 == 0 else "chat") for j in range(12)]
        records.append(make_record(12, send_s=4.0, outcome=Outcome.SHED, ttft_s=None, retry_after="1"))
        points[point] = records
    return make_result(points, slo)


def test_output_dir_has_results_report_and_charts(tmp_path):
    result = sweep_result()
    files = write_outputs(result, tmp_path / "out", check_overload(result))
    assert sorted(f.name for f in files) == sorted(["results.json", "report.md", *CHARTS])
    for name in CHARTS:
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    report = (tmp_path / "out" / "report.md").read_text()
    for text in ("# ServeWise bench report", "## Summary", "## Latency (ms)", "## Outcomes", "## By request kind",
                 "## Overload check", "rate=4/s", "ttft≤200ms, tpot≤50ms", "![timeline](timeline.png)"):
        assert text in report
    assert (tmp_path / "out" / "results.json").stat().st_size > 1000


def test_charts_survive_points_without_successes(tmp_path):
    points = {sweep(concurrencies=[1])[0]: [make_record(0, outcome=Outcome.CONNECTION_ERROR, ttft_s=None)]}
    write_outputs(make_result(points), tmp_path)
    assert all((tmp_path / name).read_bytes().startswith(PNG_MAGIC) for name in CHARTS)
