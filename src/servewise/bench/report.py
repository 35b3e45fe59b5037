"""Human-readable output: the terminal table and report.md.

Both are built from the same rows (:func:`summary_rows`), so the terminal and the
report never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from servewise.bench.metrics import LATENCY_METRICS, LatencyStats
from servewise.bench.overload import OverloadReport
from servewise.bench.records import Outcome
from servewise.bench.results import BenchResult, PointResult

STATS = ("mean", "p50", "p90", "p95", "p99", "max")
SUMMARY_HEADERS = ("point", "ok", "failed", "req/s", "in tok/s", "out tok/s", "TTFT p50/p99 ms",
                   "TPOT p50/p99 ms", "ITL p50/p99 ms", "E2E p50/p99 ms", "goodput req/s", "SLO %", "peak in-flight")


def fmt_ms(value_s: float | None) -> str:
    if value_s is None:
        return "-"
    value_ms = value_s * 1e3
    return f"{value_ms:.0f}" if value_ms >= 100 else f"{value_ms:.1f}"


def fmt_num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _p50_p99(stats: LatencyStats) -> str:
    return f"{fmt_ms(stats.p50_s)} / {fmt_ms(stats.p99_s)}"


def summary_rows(result: BenchResult) -> list[list[str]]:
    rows = []
    for point in result.points:
        s = point.summary
        rows.append([point.load.label, str(s.num_ok), str(s.num_failed), fmt_num(s.request_throughput_per_s),
                     fmt_num(s.input_tokens_per_s, 0), fmt_num(s.output_tokens_per_s, 0), _p50_p99(s.ttft),
                     _p50_p99(s.tpot), _p50_p99(s.itl), _p50_p99(s.e2e), fmt_num(s.goodput_per_s),
                     fmt_num(s.slo_attainment_pct, 1), str(s.peak_in_flight)])
    return rows


def summary_table(result: BenchResult) -> Table:
    table = Table(title=f"servewise bench: {result.label}", caption=f"SLO: {result.slo.describe()}")
    for i, header in enumerate(SUMMARY_HEADERS):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in summary_rows(result):
        table.add_row(*row)
    return table


def print_summary(result: BenchResult, console: Console, overload: OverloadReport | None = None) -> None:
    console.print(summary_table(result))
    for point in result.points:
        lag_s = point.summary.send_lag_p99_s
        if lag_s > 0.01:
            console.print(f"[yellow]{point.load.label}: requests left {lag_s * 1e3:.0f} ms behind schedule (p99); "
                          "the client may be the bottleneck or --max-concurrency is holding them[/yellow]")
    if overload is not None:
        console.print("Overload check:")
        for line in overload.lines():
            console.print(f"  {line}", markup=False)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _config_lines(result: BenchResult) -> list[str]:
    config = result.config
    target, load, workload = config["target"], config["load"], config["workload"]
    per_point = (f"{load['num_requests']} requests" if load["num_requests"] is not None
                 else f"{load['duration_s']:g} s")
    workload_text = workload["kind"]
    if workload["kind"] == "dataset":
        workload_text += f" `{workload['dataset_path']}` ({workload['dataset_format']})"
    else:
        workload_text += f", input {workload['input_len']}"
    workload_text += f", output {workload['output_len'] or 'from the dataset / fixed:128'}"
    return [
        f"- Target: `{target['base_url']}` ({target['endpoint']}), model `{result.model}`",
        f"- Started: {result.started_at}; tokenizer: {result.tokenizer}"
        + (f"; max_model_len {result.max_model_len}" if result.max_model_len else ""),
        f"- Workload: {workload_text}",
        f"- Load: {', '.join(p['label'] for p in load['points'])}; {per_point} per point; warm-up "
        f"{load['warmup_requests']} requests / {load['warmup_s']:g} s; burstiness {load['burstiness']:g}; "
        f"seed {load['seed']}",
        f"- SLO: {result.slo.describe()}",
        "",
    ]


def _latency_rows(point: PointResult) -> list[list[str]]:
    rows = []
    for metric in LATENCY_METRICS:
        stats = point.summary.latency(metric)
        rows.append([point.load.label, metric.upper(), str(stats.count)]
                    + [fmt_ms(stats.get(stat)) for stat in STATS])
    return rows


def _outcome_rows(point: PointResult) -> list[list[str]]:
    s = point.summary
    return [[point.load.label, *(str(s.outcomes[o.value]) for o in Outcome), str(s.num_shed_with_retry_after),
             str(s.num_lost), str(s.num_warmup_requests)]]


def _kind_rows(point: PointResult) -> list[list[str]]:
    """Per workload class (e.g. long vs chat in the mixed workload), when there is more than one."""
    ok = [r for r in point.records if not r.warmup and r.outcome is Outcome.OK]
    kinds = sorted({r.kind for r in ok})
    if len(kinds) < 2:
        return []
    rows = []
    for kind in kinds:
        of_kind = [r for r in ok if r.kind == kind]
        ttft = LatencyStats.of([r.ttft_s for r in of_kind if r.ttft_s is not None])
        itl = LatencyStats.of([gap for r in of_kind for gap in r.itls_s])
        rows.append([point.load.label, kind, str(len(of_kind)), _p50_p99(ttft), _p50_p99(itl)])
    return rows


def render_report(result: BenchResult, chart_names: Sequence[str] = (),
                  overload: OverloadReport | None = None) -> str:
    lines = ["# ServeWise bench report", "", *_config_lines(result), "## Summary", ""]
    lines += _md_table(SUMMARY_HEADERS, summary_rows(result))
    lines += ["## Latency (ms)", ""]
    lines += _md_table(("point", "metric", "samples", *STATS), [r for p in result.points for r in _latency_rows(p)])
    lines += ["## Outcomes", ""]
    lines += _md_table(("point", *(o.value for o in Outcome), "shed with Retry-After", "lost", "warm-up"),
                       [r for p in result.points for r in _outcome_rows(p)])
    kind_rows = [r for p in result.points for r in _kind_rows(p)]
    if kind_rows:
        lines += ["## By request kind", ""]
        lines += _md_table(("point", "kind", "ok", "TTFT p50/p99 ms", "ITL p50/p99 ms"), kind_rows)
    if overload is not None:
        lines += ["## Overload check", "", "```", *overload.lines(), "```", ""]
    if chart_names:
        lines += ["## Charts", ""] + [f"![{Path(name).stem}]({name})" for name in chart_names] + [""]
    lines += ["Raw per-request data: `results.json`.", ""]
    return "\n".join(lines)
