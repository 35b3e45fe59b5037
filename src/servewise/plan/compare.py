"""Predicted against measured (``servewise plan validate``): each figure's error, and whether the
planner's decisions match what the bench measured.

Per point and figure: predicted (the plan's first seed at the fitted cost), measured (the
median over repeated bench runs), the measured spread (max − min over the repeats, over
the median) and the error (predicted − measured) / measured. The issue's targets:

- p50 TTFT and TPOT within ±10%;
- p99 TTFT and TPOT within ±20%, or within the measured spread where that is larger;
- throughput and goodput within ±5% (goodput: or its spread);
- SLO pass/fail predicted correctly at every point;
- per configuration, the highest rate meeting the SLO within ±10%: the plan's capacity
  search against the measured one, interpolated on attainment between the highest
  swept rate that passes and the next one that fails (a lower bound if none fails);
- over the grid, the predicted best configuration is the measured best.

Figures with no measurement or no prediction are reported and not judged.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from servewise.bench.metrics import PointSummary
from servewise.plan.decisions import meets_slo
from servewise.plan.planner import FIGURES, Plan, PointPrediction

TOLERANCES = {"ttft_p50_s": 0.10, "tpot_p50_s": 0.10, "ttft_p99_s": 0.20, "tpot_p99_s": 0.20,
              "throughput_rps": 0.05, "goodput_rps": 0.05}
SPREAD_ALLOWED = ("ttft_p99_s", "tpot_p99_s", "goodput_rps")  # the measured spread may widen these
REPORTED = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "itl_p50_s", "e2e_p50_s", "throughput_rps",
            "output_tokens_per_s", "goodput_rps", "attainment")
CAPACITY_TOLERANCE = 0.10


@dataclass
class FigureCheck:
    name: str
    predicted: float | None
    measured: float | None  # median over the repeats
    spread: float | None  # (max - min) / median over the repeats
    error: float | None  # (predicted - measured) / measured
    tolerance: float | None  # allowed |error|, spread included; None = not judged
    ok: bool | None


@dataclass
class PointCheck:
    label: str
    load: str
    predicted_pass: bool
    measured_pass: bool
    figures: list[FigureCheck]

    @property
    def decision_ok(self) -> bool:
        return self.predicted_pass == self.measured_pass


@dataclass
class CapacityCheck:
    label: str
    predicted: float | None  # req/s, the plan's capacity search
    measured: float | None  # req/s, interpolated on the swept rates; None = no swept rate passes
    measured_is_lower_bound: bool  # every swept rate passed
    error: float | None
    ok: bool | None


@dataclass(frozen=True)
class EngineTotals:
    """The engine's own counters over a sweep: where step-cost error shows apart from HTTP's."""

    busy_s: float  # forward passes (engine_busy_seconds)
    num_steps: float

    def minus(self, before: EngineTotals) -> EngineTotals:
        return EngineTotals(self.busy_s - before.busy_s, self.num_steps - before.num_steps)

    @property
    def step_ms(self) -> float:
        return 1e3 * self.busy_s / self.num_steps if self.num_steps else 0.0


@dataclass
class EngineCheck:
    label: str
    predicted: EngineTotals  # the plan's, over the sweep's points
    measured: EngineTotals  # the median repeat's

    @property
    def busy_error(self) -> float | None:
        return self.predicted.busy_s / self.measured.busy_s - 1 if self.measured.busy_s else None


@dataclass
class Validation:
    points: list[PointCheck] = field(default_factory=list)
    capacities: list[CapacityCheck] = field(default_factory=list)
    predicted_best: str | None = None
    measured_best: str | None = None
    engine: list[EngineCheck] = field(default_factory=list)

    @property
    def best_ok(self) -> bool | None:
        if len(self.capacities) < 2:
            return None
        return self.predicted_best == self.measured_best

    def counts(self) -> dict[str, tuple[int, int]]:
        """figure (or decision) -> (within target, judged)."""
        out: dict[str, tuple[int, int]] = {}
        for point in self.points:
            for f in point.figures:
                if f.ok is not None:
                    good, total = out.get(f.name, (0, 0))
                    out[f.name] = (good + f.ok, total + 1)
        out["SLO pass/fail"] = (sum(p.decision_ok for p in self.points), len(self.points))
        judged = [c for c in self.capacities if c.ok is not None]
        out["highest rate meeting the SLO"] = (sum(bool(c.ok) for c in judged), len(judged))
        return out


def _attainment(summary: PointSummary) -> float | None:
    return None if summary.slo_attainment_pct is None else summary.slo_attainment_pct / 100.0


def check_figure(name: str, predicted: float | None, measured_runs: Sequence[float | None]) -> FigureCheck:
    values = [v for v in measured_runs if v is not None]
    measured = statistics.median(values) if values else None
    spread = (max(values) - min(values)) / measured if values and measured else None
    error = (predicted - measured) / measured if predicted is not None and measured else None
    tolerance = TOLERANCES.get(name)
    if tolerance is not None and name in SPREAD_ALLOWED and spread is not None:
        tolerance = max(tolerance, spread)
    ok = None if error is None or tolerance is None else abs(error) <= tolerance
    return FigureCheck(name, predicted, measured, spread, error, tolerance, ok)


def check_point(prediction: PointPrediction, runs: Sequence[PointSummary], min_attainment: float) -> PointCheck:
    figures = [check_figure(name, prediction.figures[name], [FIGURES[name](s) for s in runs]) for name in REPORTED]
    attainments = [a for a in (_attainment(s) for s in runs) if a is not None]
    measured_pass = meets_slo(statistics.median(attainments) if attainments else None, min_attainment)
    return PointCheck(prediction.label, prediction.load.label, prediction.meets_slo, measured_pass, figures)


def measured_capacity(rates: Sequence[float], attainments: Sequence[float | None], min_attainment: float
                      ) -> tuple[float | None, bool]:
    """(capacity, is a lower bound) from a sweep: interpolated between the highest passing swept rate
    and the next failing one; (None, False) when no swept rate passes."""
    ordered = sorted(zip(rates, attainments, strict=True))
    passing = [i for i, (_, a) in enumerate(ordered) if meets_slo(a, min_attainment)]
    if not passing:
        return None, False
    i = passing[-1]
    if i == len(ordered) - 1:
        return ordered[i][0], True
    (r0, a0), (r1, a1) = ordered[i], ordered[i + 1]
    a0, a1 = a0 or 0.0, a1 or 0.0
    fraction = (a0 - min_attainment) / (a0 - a1) if a0 > a1 else 0.0
    return r0 + (r1 - r0) * min(1.0, max(0.0, fraction)), False


def compare(plan: Plan, measured: dict[str, list[list[PointSummary]]], min_attainment: float,
            engine: dict[str, list[EngineTotals]] | None = None) -> Validation:
    """``measured[label]``: per repeat, the bench's summaries in sweep order; ``engine[label]``: per
    repeat, the server's engine counters over the sweep."""
    validation = Validation()
    for label, totals in (engine or {}).items():
        points = [p for p in plan.points if p.label == label]
        if totals and points:
            middle = sorted(totals, key=lambda t: t.busy_s)[len(totals) // 2]
            predicted = EngineTotals(sum(p.engine_busy_s for p in points), sum(p.num_steps for p in points))
            validation.engine.append(EngineCheck(label, predicted, middle))
    for prediction in plan.points:
        repeats = measured.get(prediction.label)
        if not repeats:
            continue
        runs = [points[prediction.index] for points in repeats if prediction.index < len(points)]
        validation.points.append(check_point(prediction, runs, min_attainment))
    measured_rates: dict[str, float] = {}
    for capacity in plan.capacities:
        points = [p for p in plan.points if p.label == capacity.label and p.load.rate_per_s is not None]
        repeats = measured.get(capacity.label)
        if not repeats or not points:
            continue
        attainments = []
        for p in points:
            values = [a for a in (_attainment(r[p.index]) for r in repeats if p.index < len(r)) if a is not None]
            attainments.append(statistics.median(values) if values else None)
        rates = [float(p.load.rate_per_s or 0.0) for p in points]
        value, lower_bound = measured_capacity(rates, attainments, min_attainment)
        measured_rates[capacity.label] = (value or 0.0) / capacity.knobs.replicas
        error = (capacity.max_rate - value) / value if value else None
        ok = None if error is None or lower_bound else abs(error) <= CAPACITY_TOLERANCE
        if lower_bound and value:
            ok = None if capacity.max_rate >= value else False
        validation.capacities.append(CapacityCheck(capacity.label, capacity.max_rate, value, lower_bound, error, ok))
    best = plan.best
    validation.predicted_best = best.label if best is not None else None
    if measured_rates and max(measured_rates.values()) > 0:
        validation.measured_best = max(measured_rates, key=lambda k: measured_rates[k])
    return validation
