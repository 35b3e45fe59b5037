"""PNG charts of a run, drawn with matplotlib's Agg canvas (no display, no pyplot state).

- ``latency_vs_throughput.png``: p50 and p99 TTFT, TPOT, ITL and E2E against achieved
  throughput across the sweep, with the SLO as a dashed line;
- ``ttft_cdf.png`` and ``itl_cdf.png``: one empirical CDF per point;
- ``timeline.png``: completed requests per second and requests in flight over the run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from servewise.bench.metrics import LATENCY_METRICS, in_flight_timeline
from servewise.bench.records import Outcome, RequestRecord
from servewise.bench.results import BenchResult, PointResult

DPI = 100
# Throughput bins of the timeline: about this many over the run, each 0.1 s to 1 s wide.
TIMELINE_NUM_BINS = 60


def write_charts(result: BenchResult, out_dir: str | Path) -> list[Path]:
    """Draw every chart into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    drawers = {
        "latency_vs_throughput.png": _latency_vs_throughput,
        "ttft_cdf.png": lambda r, fig: _cdf(r, fig, "TTFT", _ttfts_s),
        "itl_cdf.png": lambda r, fig: _cdf(r, fig, "ITL", _itls_s),
        "timeline.png": _timeline,
    }
    written = []
    for name, draw in drawers.items():
        fig = Figure(figsize=(10, 6), dpi=DPI, layout="constrained")
        draw(result, fig)
        fig.savefig(out / name)
        written.append(out / name)
    return written


def _ok(point: PointResult) -> list[RequestRecord]:
    return [r for r in point.records if not r.warmup and r.outcome is Outcome.OK]


def _ttfts_s(point: PointResult) -> list[float]:
    return [r.ttft_s for r in _ok(point) if r.ttft_s is not None]


def _itls_s(point: PointResult) -> list[float]:
    return [gap for r in _ok(point) for gap in r.itls_s]


def _latency_vs_throughput(result: BenchResult, fig: Figure) -> None:
    axes = fig.subplots(2, 2, sharex=True).flatten()
    slo = result.slo
    throughput = [p.summary.request_throughput_per_s for p in result.points]
    for ax, metric in zip(axes, LATENCY_METRICS, strict=True):
        for stat, style in (("p50", "o-"), ("p99", "s--")):
            values = [p.summary.latency(metric).get(stat) for p in result.points]
            ax.plot(throughput, [np.nan if v is None else v * 1e3 for v in values], style, label=stat)
        target_s = getattr(slo, f"{metric}_s")
        if target_s is not None:
            ax.axhline(target_s * 1e3, color="red", linestyle=":", label=f"SLO {target_s * 1e3:g} ms")
        for x, point in zip(throughput, result.points, strict=True):
            ax.annotate(point.load.label, (x, 0), textcoords="offset points", xytext=(0, 4), fontsize=7,
                        xycoords=("data", "axes fraction"), ha="center")
        ax.set_title(metric.upper())
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[2:]:
        ax.set_xlabel("achieved throughput (successful req/s)")
    fig.suptitle(f"Latency vs throughput: {result.label}")


def _cdf(result: BenchResult, fig: Figure, name: str, values_of: Callable[[PointResult], list[float]]) -> None:
    ax = fig.subplots()
    for point in result.points:
        values = np.sort(np.asarray(values_of(point), dtype=np.float64)) * 1e3
        if values.size:
            ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=point.load.label)
    target_s = getattr(result.slo, f"{name.lower()}_s")
    if target_s is not None:
        ax.axvline(target_s * 1e3, color="red", linestyle=":", label=f"SLO {target_s * 1e3:g} ms")
    ax.set_xlabel(f"{name} (ms)")
    ax.set_ylabel("fraction of samples ≤ x")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    _legend(ax)
    ax.set_title(f"{name} CDF: {result.label}")


def _timeline(result: BenchResult, fig: Figure) -> None:
    top, bottom = fig.subplots(2, 1, sharex=True)
    run_end_s = max((p.started_s + r.end_s for p in result.points for r in p.records), default=1.0)
    bin_s = min(1.0, max(0.1, run_end_s / TIMELINE_NUM_BINS))
    for point in result.points:
        offset_s = point.started_s
        ends = np.asarray([offset_s + r.end_s for r in point.records if r.outcome is Outcome.OK])
        if ends.size:
            edges = np.arange(offset_s, ends.max() + 2 * bin_s, bin_s)
            counts, _ = np.histogram(ends, bins=edges)
            top.step(edges[:-1], counts / bin_s, where="post", label=point.load.label)
        times, in_flight = in_flight_timeline(point.records)
        bottom.step([offset_s + t for t in times], in_flight, where="post", label=point.load.label)
        for ax in (top, bottom):
            ax.axvline(offset_s, color="grey", linewidth=0.5)
    top.set_ylabel("completed req/s")
    bottom.set_ylabel("requests in flight")
    bottom.set_xlabel("time since the run started (s)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    _legend(top)
    top.set_title(f"Timeline: {result.label}")


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
