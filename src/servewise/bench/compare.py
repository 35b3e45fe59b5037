"""``servewise bench compare a.json b.json``: two runs side by side, point by point, with ratios.

Points pair up by label (``rate=2/s``, ``concurrency=8``); when the two sweeps share
no label but have as many points, they pair up in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.table import Table

from servewise.bench.metrics import LATENCY_METRICS, PointSummary
from servewise.bench.report import fmt_ms, fmt_num
from servewise.bench.results import BenchResult, PointResult


@dataclass(frozen=True)
class Metric:
    name: str
    value_of: Callable[[PointSummary], float | None]
    lower_is_better: bool
    in_ms: bool = False  # a latency in seconds, shown in ms
    digits: int = 2  # decimals shown when not in ms


def _latency_metric(metric: str, stat: str) -> Metric:
    return Metric(f"{metric.upper()} {stat} ms", lambda s: s.latency(metric).get(stat), lower_is_better=True,
                  in_ms=True)


METRICS = (
    Metric("req/s", lambda s: s.request_throughput_per_s, lower_is_better=False),
    Metric("out tok/s", lambda s: s.output_tokens_per_s, lower_is_better=False),
    Metric("goodput req/s", lambda s: s.goodput_per_s, lower_is_better=False),
    Metric("SLO attainment %", lambda s: s.slo_attainment_pct, lower_is_better=False),
    Metric("failed", lambda s: float(s.num_failed), lower_is_better=True, digits=0),
    *(_latency_metric(metric, stat) for metric in LATENCY_METRICS for stat in ("p50", "p99")),
)


@dataclass(frozen=True)
class ComparisonRow:
    point: str  # "rate=2/s", or "rate=2/s vs rate=3/s" when paired by position
    metric: Metric
    a: float | None
    b: float | None

    @property
    def ratio(self) -> float | None:
        """b / a; None when either is missing or a is 0."""
        if self.a is None or self.b is None or self.a == 0:
            return None
        return self.b / self.a

    @property
    def verdict(self) -> str:
        if self.a is None or self.b is None or self.a == self.b:
            return ""
        b_is_lower = self.b < self.a
        return "better" if b_is_lower == self.metric.lower_is_better else "worse"

    def cells(self) -> list[str]:
        def show(value: float | None) -> str:
            return fmt_ms(value) if self.metric.in_ms else fmt_num(value, self.metric.digits)

        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}x"
        return [self.point, self.metric.name, show(self.a), show(self.b), ratio, self.verdict]


def pair_points(a: BenchResult, b: BenchResult) -> list[tuple[str, PointResult, PointResult]]:
    b_by_label = {p.load.label: p for p in b.points}
    pairs = [(p.load.label, p, b_by_label[p.load.label]) for p in a.points if p.load.label in b_by_label]
    if not pairs and len(a.points) == len(b.points):
        pairs = [(f"{pa.load.label} vs {pb.load.label}", pa, pb) for pa, pb in zip(a.points, b.points, strict=True)]
    return pairs


def compare_results(a: BenchResult, b: BenchResult) -> list[ComparisonRow]:
    return [ComparisonRow(label, metric, metric.value_of(pa.summary), metric.value_of(pb.summary))
            for label, pa, pb in pair_points(a, b) for metric in METRICS]


def comparison_table(a: BenchResult, b: BenchResult, a_name: str = "A", b_name: str = "B") -> Table:
    table = Table(title=f"{a_name}: {a.label}\n{b_name}: {b.label}")
    for header in ("point", "metric", a_name, b_name, f"{b_name}/{a_name}", f"{b_name} is"):
        table.add_column(header, justify="left" if header in ("point", "metric") else "right")
    previous_point = None
    for row in compare_results(a, b):
        if previous_point is not None and row.point != previous_point:
            table.add_section()
        previous_point = row.point
        table.add_row(*row.cells())
    return table


def unmatched_points(a: BenchResult, b: BenchResult) -> list[str]:
    paired = pair_points(a, b)
    a_paired = {id(pa) for _, pa, _ in paired}
    b_paired = {id(pb) for _, _, pb in paired}
    return ([f"only in A: {p.load.label}" for p in a.points if id(p) not in a_paired]
            + [f"only in B: {p.load.label}" for p in b.points if id(p) not in b_paired])
