"""PNG charts of a plan, drawn with matplotlib's Agg canvas (no display, no pyplot state).

- ``latency_vs_rate.png``: p50 and p99 TTFT and TPOT against the offered load, one line per
  configuration, the prediction interval as a band, the SLO as a dashed line;
- ``pareto.png``: p99 TTFT against goodput per replica for every point, the frontier joined.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from servewise.bench.slo import SloSpec
from servewise.plan.planner import Plan, PointPrediction

DPI = 100


def _x(p: PointPrediction) -> float:
    return float(p.load.rate_per_s if p.load.rate_per_s is not None else p.load.concurrency or 0)


def _by_config(points: Sequence[PointPrediction]) -> dict[str, list[PointPrediction]]:
    groups: dict[str, list[PointPrediction]] = {}
    for p in points:
        groups.setdefault(p.label, []).append(p)
    return {k: sorted(v, key=_x) for k, v in groups.items()}


def _latency_vs_rate(plan: Plan, slo: SloSpec, fig: Figure) -> None:
    axes = fig.subplots(1, 2)
    closed = any(p.load.concurrency is not None for p in plan.points)
    for ax, metric in zip(axes, ("ttft", "tpot"), strict=True):
        for label, points in _by_config(plan.points).items():
            xs = [_x(p) for p in points]
            for stat, style in (("p50", "o-"), ("p99", "s--")):
                name = f"{metric}_{stat}_s"
                ys = [(p.figures[name] or float("nan")) * 1e3 for p in points]
                line = ax.plot(xs, ys, style, label=f"{label} {stat}")[0]
                lows = [p.intervals.get(name, (float("nan"),) * 2)[0] * 1e3 for p in points]
                highs = [p.intervals.get(name, (float("nan"),) * 2)[1] * 1e3 for p in points]
                ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15)
        target = getattr(slo, f"{metric}_s")
        if target is not None:
            ax.axhline(target * 1e3, color="red", linestyle=":", label=f"SLO {target * 1e3:g} ms")
        ax.set_xlabel("concurrency" if closed else "offered rate (req/s)")
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.set_title(f"predicted {metric.upper()}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def _pareto(plan: Plan, fig: Figure) -> None:
    ax = fig.subplots()
    for label, points in _by_config(plan.points).items():
        xs = [(p.figures["goodput_rps"] or p.figures["throughput_rps"] or 0.0) / p.knobs.replicas for p in points]
        ys = [(p.figures["ttft_p99_s"] or float("nan")) * 1e3 for p in points]
        ax.scatter(xs, ys, label=label, s=24)
    front = sorted((p for p in plan.points if p.pareto),
                   key=lambda p: (p.figures["goodput_rps"] or p.figures["throughput_rps"] or 0.0) / p.knobs.replicas)
    if front:
        ax.plot([(p.figures["goodput_rps"] or p.figures["throughput_rps"] or 0.0) / p.knobs.replicas for p in front],
                [(p.figures["ttft_p99_s"] or float("nan")) * 1e3 for p in front], "k-", linewidth=1,
                label="Pareto frontier")
    ax.set_xlabel("goodput per replica (req/s within the SLO; throughput without one)")
    ax.set_ylabel("p99 TTFT (ms)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("latency / throughput frontier")


def write_charts(plan: Plan, slo: SloSpec, out_dir: Path) -> list[Path]:
    written = []
    for name, draw in (("latency_vs_rate.png", lambda fig: _latency_vs_rate(plan, slo, fig)),
                       ("pareto.png", lambda fig: _pareto(plan, fig))):
        fig = Figure(figsize=(12, 6), dpi=DPI, layout="constrained")
        draw(fig)
        fig.savefig(out_dir / name)
        written.append(out_dir / name)
    return written
