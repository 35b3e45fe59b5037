"""The predicted-vs-measured tables of ``servewise plan validate`` (terminal, markdown, JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from servewise.plan.compare import REPORTED, TOLERANCES, FigureCheck, Validation
from servewise.plan.planner import LATENCY_FIGURES

SHORT = {"ttft_p50_s": "TTFT p50", "ttft_p99_s": "TTFT p99", "tpot_p50_s": "TPOT p50", "tpot_p99_s": "TPOT p99",
         "itl_p50_s": "ITL p50", "e2e_p50_s": "E2E p50", "throughput_rps": "req/s", "output_tokens_per_s": "tok/s",
         "goodput_rps": "goodput", "attainment": "SLO %"}


def _value(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name in LATENCY_FIGURES:
        return f"{value * 1e3:.0f}" if value >= 0.1 else f"{value * 1e3:.1f}"
    if name == "attainment":
        return f"{100 * value:.1f}"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _cell(f: FigureCheck) -> str:
    mark = "" if f.ok is None else (" ✓" if f.ok else " ✗")
    error = "" if f.error is None else f" ({100 * f.error:+.0f}%)"
    return f"{_value(f.name, f.predicted)} / {_value(f.name, f.measured)}{error}{mark}"


def headers() -> list[str]:
    return ["config", "load", *(SHORT[n] for n in REPORTED), "SLO pass pred/meas"]


def point_rows(validation: Validation) -> list[list[str]]:
    rows = []
    for p in validation.points:
        decision = f"{'pass' if p.predicted_pass else 'fail'} / {'pass' if p.measured_pass else 'fail'}"
        rows.append([p.label, p.load, *(_cell(f) for f in p.figures), decision + (" ✓" if p.decision_ok else " ✗")])
    return rows


def spread_rows(validation: Validation) -> list[list[str]]:
    return [[p.label, p.load, *("-" if f.spread is None else f"{100 * f.spread:.0f}%" for f in p.figures)]
            for p in validation.points]


def summary_lines(validation: Validation) -> list[str]:
    lines = []
    for name, (good, total) in validation.counts().items():
        if total:
            target = f" (target ±{100 * TOLERANCES[name]:.0f}%)" if name in TOLERANCES else ""
            lines.append(f"{SHORT.get(name, name)}{target}: {good}/{total} within target")
    for c in validation.capacities:
        measured = "no swept rate passes" if c.measured is None else (
            f"{'≥ ' if c.measured_is_lower_bound else ''}{c.measured:.2f} req/s")
        error = "" if c.error is None else f" ({100 * c.error:+.0f}%)"
        verdict = "" if c.ok is None else (" ✓" if c.ok else " ✗")
        lines.append(f"{c.label}: highest rate meeting the SLO, predicted {c.predicted or 0:.2f} req/s, "
                     f"measured {measured}{error}{verdict}")
    for e in validation.engine:
        error = "" if e.busy_error is None else f" ({100 * e.busy_error:+.0f}%)"
        lines.append(f"{e.label}: engine busy over the sweep (forward passes only), predicted "
                     f"{e.predicted.busy_s:.1f} s in {e.predicted.num_steps:.0f} steps "
                     f"({e.predicted.step_ms:.1f} ms/step), measured {e.measured.busy_s:.1f} s in "
                     f"{e.measured.num_steps:.0f} steps ({e.measured.step_ms:.1f} ms/step){error}")
    if validation.best_ok is not None:
        lines.append(f"best configuration: predicted {validation.predicted_best}, measured {validation.measured_best}"
                     f" {'✓' if validation.best_ok else '✗'}")
    return lines


def _md(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows] + [""])


def render_markdown(validation: Validation, header: Sequence[str]) -> str:
    lines = ["# ServeWise plan validation: predicted / measured (error)", "", *header, "",
             "Times in ms; each cell is predicted / measured (median of the repeats), error relative to measured.", ""]
    lines += _md(headers(), point_rows(validation))
    lines += ["## Run-to-run spread of the measurements ((max − min) / median)", ""]
    lines += _md(["config", "load", *(SHORT[n] for n in REPORTED)], spread_rows(validation))
    lines += ["## Summary", "", *(f"- {line}" for line in summary_lines(validation)), ""]
    return "\n".join(lines)


def validation_dict(validation: Validation) -> dict[str, Any]:
    return {"points": [{**asdict(p), "decision_ok": p.decision_ok} for p in validation.points],
            "capacities": [asdict(c) for c in validation.capacities], "predicted_best": validation.predicted_best,
            "measured_best": validation.measured_best, "best_ok": validation.best_ok,
            "engine": [{**asdict(e), "busy_error": e.busy_error} for e in validation.engine],
            "counts": {k: list(v) for k, v in validation.counts().items()}}
