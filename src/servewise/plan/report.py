"""A plan's outputs: the terminal tables, report.md and plan.json, all from the same rows."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from servewise.bench.report import fmt_ms, fmt_num
from servewise.plan.planner import FIGURES, LATENCY_FIGURES, Plan, PointPrediction

SCHEMA_VERSION = 1
TOOL_NAME = "servewise-plan"
POINT_HEADERS = ("config", "load", "TTFT p50/p90/p99 ms", "TPOT p50/p90/p99 ms", "ITL p50/p99 ms", "E2E p50/p99 ms",
                 "req/s", "out tok/s", "goodput req/s", "SLO %", "shed %", "prefix hit %", "$/1M out", "flags")
INTERVAL_FIGURES = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "goodput_rps", "attainment")
FLAGS_LEGEND = "flags: ✓ meets the SLO, ✗ misses it, P on the Pareto frontier, ! beyond the profiled step shapes"


@dataclass
class PlanContext:
    """What the plan was asked, for the report's header."""

    model: str
    profiles: list[str]  # one line per profile: backend, machine, fit error
    workload: str
    load: str
    slo: str  # the targets, or "none"
    min_attainment: float
    seeds: int
    cost_error: str  # how the intervals' step-cost error was chosen
    varied: list[str]  # knobs the grid varies
    notes: list[str] = field(default_factory=list)


def _ms3(p: PointPrediction, metric: str, stats: Sequence[str] = ("p50", "p90", "p99")) -> str:
    return " / ".join(fmt_ms(p.figures[f"{metric}_{s}_s"]) for s in stats)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _flags(p: PointPrediction, has_slo: bool) -> str:
    flags = ("✓" if p.meets_slo else "✗") if has_slo else ""
    return flags + ("P" if p.pareto else "") + ("!" if p.outside_fraction > 0 else "")


def point_rows(plan: Plan, has_slo: bool) -> list[list[str]]:
    rows = []
    for p in plan.points:
        f = p.figures
        rows.append([p.label, p.load.label, _ms3(p, "ttft"), _ms3(p, "tpot"), _ms3(p, "itl", ("p50", "p99")),
                     _ms3(p, "e2e", ("p50", "p99")), fmt_num(f["throughput_rps"]), fmt_num(f["output_tokens_per_s"], 0),
                     fmt_num(f["goodput_rps"]), _pct(f["attainment"]), _pct(p.shed_rate), _pct(p.prefix_hit_ratio),
                     fmt_num(p.cost_per_1m), _flags(p, has_slo)])
    return rows


def _show(name: str, value: float | None) -> str:
    if name in LATENCY_FIGURES:
        return fmt_ms(value)
    return _pct(value) if name == "attainment" else fmt_num(value)


def _interval(p: PointPrediction, name: str) -> str:
    value, interval = p.figures[name], p.intervals.get(name)
    if value is None or interval is None:
        return "-"
    return f"{_show(name, value)} [{_show(name, interval[0])}–{_show(name, interval[1])}]"


def interval_rows(plan: Plan) -> list[list[str]]:
    return [[p.label, p.load.label, *(_interval(p, n) for n in INTERVAL_FIGURES)] for p in plan.points]


def decision_lines(plan: Plan, has_slo: bool) -> list[str]:
    """Capacity per configuration, replicas for the target, the best configuration, the frontier."""
    lines = []
    for c in plan.capacities:
        cost = f", ${c.cost_per_1m:.3f} per 1M output tokens" if c.cost_per_1m is not None else ""
        lines.append(f"{c.label}: highest rate meeting the SLO {c.max_rate:.2f} req/s "
                     f"({c.per_replica:.2f} req/s per replica, {c.output_tokens_per_s:.0f} output tok/s){cost}")
    for t in plan.targets:
        if t.replicas is None:
            lines.append(f"{t.label}: {t.target_rate:g} req/s with {100 * t.headroom:.0f}% headroom is out of reach")
        else:
            cost = f", ${t.cost_per_1m:.3f} per 1M output tokens" if t.cost_per_1m is not None else ""
            lines.append(f"{t.label}: {t.replicas} replica(s) for {t.target_rate:g} req/s with "
                         f"{100 * t.headroom:.0f}% headroom (simulated at {t.target_rate * (1 + t.headroom):g} req/s){cost}")
    best = plan.best
    if best is not None and len(plan.capacities) > 1:
        lines.append(f"best configuration: {best.label} ({best.per_replica:.2f} req/s per replica within the SLO)")
    front = sorted({f"{p.label} @ {p.load.label}" for p in plan.points if p.pareto})
    if front:
        lines.append("Pareto frontier (p99 TTFT, goodput per replica" + (", cost" if any(
            p.cost_per_1m is not None for p in plan.points) else "") + "): " + "; ".join(front))
    if has_slo and not any(p.meets_slo for p in plan.points):
        lines.append("no simulated point meets the SLO")
    return lines


def print_plan(plan: Plan, context: PlanContext, console: Console) -> None:
    has_slo = context.slo != "none"
    table = Table(title=f"servewise plan: {context.model}", caption=f"SLO: {context.slo}; {FLAGS_LEGEND}")
    for i, header in enumerate(POINT_HEADERS):
        table.add_column(header, justify="left" if i < 2 else "right")
    for row in point_rows(plan, has_slo):
        table.add_row(*row)
    console.print(table)
    for line in decision_lines(plan, has_slo) + plan.notes + context.notes:
        console.print(line, markup=False)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows] + [""])


def render_markdown(plan: Plan, context: PlanContext, charts: Sequence[str] = ()) -> str:
    has_slo = context.slo != "none"
    lines = ["# ServeWise capacity plan", "", f"- Model: {context.model}",
             *(f"- Profile: {p}" for p in context.profiles), f"- Workload: {context.workload}",
             f"- Load: {context.load}", f"- SLO: {context.slo}; a point meets it when ≥ "
             f"{100 * context.min_attainment:g}% of its requests do",
             f"- Intervals: {context.seeds} seeds × step cost {context.cost_error}", "", "## Predicted points", ""]
    lines += _md_table(POINT_HEADERS, point_rows(plan, has_slo)) + [FLAGS_LEGEND, ""]
    lines += ["## Prediction intervals (value [low–high]; ms, %, req/s)", ""]
    lines += _md_table(("config", "load", *INTERVAL_FIGURES), interval_rows(plan))
    decisions = decision_lines(plan, has_slo) + plan.notes + context.notes
    if decisions:
        lines += ["## Decisions", "", *(f"- {d}" for d in decisions), ""]
    if charts:
        lines += ["## Charts", "", *(f"![{Path(c).stem}]({c})" for c in charts), ""]
    lines += ["Every figure comes from the bench's own summary of simulated requests; plan.json has them all.", ""]
    return "\n".join(lines)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def point_dict(p: PointPrediction) -> dict[str, Any]:
    return {"config": p.label, **p.knobs.to_dict(), "rate": _finite(p.load.rate_per_s),
            "concurrency": p.load.concurrency, "load": p.load.label,
            **{name: p.figures[name] for name in FIGURES}, "shed_rate": p.shed_rate,
            "prefix_hit_ratio": p.prefix_hit_ratio, "num_preemptions": p.num_preemptions, "meets_slo": p.meets_slo,
            "cost_per_1m_output_tokens": p.cost_per_1m, "pareto": p.pareto, "outside_profile": p.outside_fraction > 0,
            "outside_profile_fraction": p.outside_fraction,
            "intervals": {k: list(v) for k, v in p.intervals.items()}}


def plan_dict(plan: Plan, context: PlanContext) -> dict[str, Any]:
    best = plan.best
    return {"schema_version": SCHEMA_VERSION, "tool": TOOL_NAME, "model": context.model, "profiles": context.profiles,
            "workload": context.workload, "load": context.load, "slo": context.slo,
            "min_attainment": context.min_attainment, "varied": context.varied,
            "points": [point_dict(p) for p in plan.points],
            "capacity": [{"config": c.label, **c.knobs.to_dict(), "max_rate": c.max_rate,
                          "max_rate_per_replica": c.per_replica, "output_tokens_per_s": c.output_tokens_per_s,
                          "cost_per_1m_output_tokens": c.cost_per_1m} for c in plan.capacities],
            "targets": [vars(t) for t in plan.targets],
            "best": None if best is None else best.label, "notes": plan.notes + context.notes}


def write_json(plan: Plan, context: PlanContext, path: Path) -> None:
    path.write_text(json.dumps(plan_dict(plan, context), indent=1) + "\n", encoding="utf-8")
