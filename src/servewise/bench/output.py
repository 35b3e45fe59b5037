"""The ``--output-dir`` of a run: results.json, the PNG charts and report.md."""

from __future__ import annotations

from pathlib import Path

from servewise.bench.charts import write_charts
from servewise.bench.overload import OverloadReport
from servewise.bench.report import render_report
from servewise.bench.results import BenchResult

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"


def write_outputs(result: BenchResult, out_dir: str | Path, overload: OverloadReport | None = None) -> list[Path]:
    """Write everything into ``out_dir`` (created if needed); returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / RESULTS_FILE)
    charts = write_charts(result, out)
    (out / REPORT_FILE).write_text(render_report(result, [c.name for c in charts], overload), encoding="utf-8")
    return [out / RESULTS_FILE, *charts, out / REPORT_FILE]
