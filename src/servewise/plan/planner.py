"""A plan: every configuration × load point simulated over seeds and the fit's error, then the
capacity of each configuration, replicas for a target rate, cost, and the Pareto frontier.

Each point is simulated ``seeds`` times (seed s re-draws the bench's arrival times and
prompts, as ``servewise bench --seed s`` would), and twice more with every step
``1 ± cost_error`` as long (the profile's cross-validated MAPE by default). The figures
reported are those of the first seed at the fitted cost; the interval of each is the
range over all those runs. Figures come from the bench's own summary of the simulated
requests, so predicted and measured share every definition.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from servewise.bench.metrics import PointSummary, summarize
from servewise.bench.schedule import LoadConfig, LoadPoint
from servewise.bench.slo import SloSpec
from servewise.config import ModelArchConfig
from servewise.plan.decisions import (
    cost_per_million_tokens,
    max_rate_meeting,
    meets_slo,
    pareto_front,
    replicas_needed,
)
from servewise.plan.knobs import Knobs, engine_spec
from servewise.plan.profile import Profile, ProfileError
from servewise.plan.simulator import FleetSimulator, SimResult, blocks_ever_needed
from servewise.plan.sources import Warmup, WorkloadSource
from servewise.plan.workload import PointWorkload
from servewise.slo import SLOClass

log = logging.getLogger("servewise.plan")
RateWorkload = Callable[[float], tuple[PointWorkload, LoadConfig]]  # rate -> open-loop requests at that rate
# figure name -> how to read it from the bench's summary of a point
def _latency(metric: str, stat: str) -> Callable[[PointSummary], float | None]:
    return lambda s: s.latency(metric).get(stat)


LATENCY_FIGURES = tuple(f"{m}_{p}_s" for m in ("ttft", "tpot", "itl", "e2e") for p in ("p50", "p90", "p99"))
FIGURES: dict[str, Callable[[PointSummary], float | None]] = {
    **{name: _latency(*name.split("_")[:2]) for name in LATENCY_FIGURES},
    "throughput_rps": lambda s: s.request_throughput_per_s,
    "output_tokens_per_s": lambda s: s.output_tokens_per_s,
    "goodput_rps": lambda s: s.goodput_per_s,
    "attainment": lambda s: None if s.slo_attainment_pct is None else s.slo_attainment_pct / 100.0,
}


@dataclass(frozen=True)
class PlanSettings:
    slo: SloSpec  # what a good request is (the bench's --slo)
    slo_class: SLOClass  # the server's class: admission and priority
    seeds: int = 3  # runs per point, seeds seed .. seed + seeds - 1
    min_attainment: float = 0.99  # a point meets the SLO when this share of its requests do
    cost_error: float | None = None  # ± relative step-cost error of the intervals; None = the profile's CV MAPE
    price_per_hour: float | None = None  # $ per replica-hour
    target_rate: float | None = None  # req/s the fleet must serve
    headroom: float = 0.2  # ... at target × (1 + headroom)
    find_capacity: bool = True  # search each configuration's highest rate meeting the SLO
    engine_only: bool = False  # ignore the profiles' serving calibration (simulate the engine alone)

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError("seeds must be ≥ 1")
        if not 0 < self.min_attainment <= 1:
            raise ValueError("the attainment target must be in (0, 1]")
        if self.cost_error is not None and not 0 <= self.cost_error < 1:
            raise ValueError("the cost error must be in [0, 1)")
        if self.price_per_hour is not None and not self.price_per_hour > 0:
            raise ValueError("the price per hour must be positive")
        if self.target_rate is not None and not self.target_rate > 0:
            raise ValueError("the target rate must be positive")
        if not self.headroom >= 0:
            raise ValueError("headroom must be ≥ 0")


@dataclass
class PointPrediction:
    knobs: Knobs
    label: str  # the configuration, by the knobs the grid varies
    index: int  # position in the sweep
    load: LoadPoint
    summary: PointSummary  # of the first seed at the fitted cost
    figures: dict[str, float | None]
    intervals: dict[str, tuple[float, float]]  # figure -> (low, high) over seeds and cost error
    shed_rate: float  # shed / measured requests
    prefix_hit_ratio: float | None  # prompt tokens served from the prefix cache / looked up
    num_preemptions: int
    outside_fraction: float  # steps beyond the profiled shapes
    num_steps: int  # engine steps (all replicas)
    engine_busy_s: float  # their forward time, as the engine's engine_busy_seconds counts it
    meets_slo: bool
    cost_per_1m: float | None = None
    pareto: bool = False


@dataclass
class Capacity:
    knobs: Knobs
    label: str
    max_rate: float  # the fleet's highest rate meeting the SLO, req/s
    output_tokens_per_s: float  # at that rate
    cost_per_1m: float | None

    @property
    def per_replica(self) -> float:
        return self.max_rate / self.knobs.replicas


@dataclass
class TargetPlan:
    label: str
    target_rate: float
    headroom: float
    replicas: int | None  # None: not reachable within the search
    cost_per_1m: float | None


@dataclass
class Plan:
    points: list[PointPrediction]
    capacities: list[Capacity] = field(default_factory=list)
    targets: list[TargetPlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # foreign profiles, extrapolation, ...

    @property
    def best(self) -> Capacity | None:
        """The configuration serving the highest rate per replica within the SLO (then the cheapest)."""
        meeting = [c for c in self.capacities if c.max_rate > 0]
        if not meeting:
            return None
        return max(meeting, key=lambda c: (c.per_replica, -(c.cost_per_1m or 0.0)))


class ProfileSet:
    """Profiles by (device, linear backend, threads): a configuration runs at its profile's costs."""

    def __init__(self, profiles: Sequence[Profile]) -> None:
        if not profiles:
            raise ProfileError("give at least one --profile")
        self._by_key = {(p.backend.linear_backend, p.backend.threads): p for p in profiles}
        self.first = profiles[0]

    def for_knobs(self, knobs: Knobs) -> Profile:
        profile = self._by_key.get((knobs.linear_backend, knobs.threads))
        if profile is None:
            have = ", ".join(f"{b} with {t} threads" for b, t in self._by_key)
            raise ProfileError(
                f"no profile for linear_backend={knobs.linear_backend} with {knobs.threads} threads (have: {have}); "
                f"run `servewise profile --linear-backend {knobs.linear_backend} --threads {knobs.threads} "
                f"--output profile-{knobs.linear_backend}-{knobs.threads}.json` and pass it with another --profile")
        return profile


class Planner:
    def __init__(self, profiles: ProfileSet, arch: ModelArchConfig, settings: PlanSettings) -> None:
        self.profiles, self.arch, self.settings = profiles, arch, settings

    def fleet(self, knobs: Knobs, *, seed: int = 0, cost_scale: float = 1.0,
              blocks_needed: int | None = None) -> FleetSimulator:
        """A fresh fleet of ``knobs``: the engines as the server builds them, at this profile's costs."""
        profile = self.profiles.for_knobs(knobs)
        spec = engine_spec(knobs, self.arch, profile.backend.device)
        serving = None if self.settings.engine_only else profile.serving
        cost = profile.cost if serving is None else serving.apply(profile.cost)
        return FleetSimulator(spec, cost.scaled(cost_scale), self.settings.slo_class,
                              num_replicas=knobs.replicas, admission=knobs.admission, ranges=profile.ranges,
                              seed=seed, blocks_needed=blocks_needed, serving=serving)

    def simulate(self, knobs: Knobs, workload: PointWorkload, load: LoadConfig, point: LoadPoint, *,
                 warmup: Warmup | None = None, seed: int = 0, cost_scale: float = 1.0
                 ) -> tuple[PointSummary, SimResult]:
        """One point on a fresh fleet (after ``warmup``, as validate's fresh server gets)."""
        runs = ([warmup] if warmup else []) + [(workload, load, point)]
        fleet = self.fleet(knobs, seed=seed, cost_scale=cost_scale, blocks_needed=_blocks(runs, knobs))
        result = [fleet.run(*run) for run in runs][-1]
        return summarize(result.records, self.settings.slo), result

    def sweep(self, knobs: Knobs, source: WorkloadSource, *, seed_offset: int = 0, cost_scale: float = 1.0
              ) -> list[tuple[PointSummary, SimResult]]:
        """Every point of the sweep in order on one fleet, as the bench runs them against one server
        (after the warm-up a validation sends): prefix caches carry over from point to point."""
        load = dataclasses.replace(source.load, seed=source.load.seed + seed_offset)
        runs = [(source.point(i, seed_offset), load, point) for i, point in enumerate(load.points)]
        warmup = source.warmup(seed_offset)
        fleet = self.fleet(knobs, seed=seed_offset, cost_scale=cost_scale,
                           blocks_needed=_blocks(([warmup] if warmup else []) + runs, knobs))
        if warmup is not None:
            fleet.run(*warmup)
        results = [fleet.run(*run) for run in runs]
        return [(summarize(r.records, self.settings.slo), r) for r in results]

    def predict(self, knobs: Knobs, label: str, source: WorkloadSource) -> list[PointPrediction]:
        """Each point's figures (first seed, fitted cost) and their intervals over seeds and cost error."""
        error = self.settings.cost_error
        if error is None:
            error = self.profiles.for_knobs(knobs).fit.cv_mape
        runs = [(s, 1.0) for s in range(self.settings.seeds)] + [(0, 1.0 - error), (0, 1.0 + error)]
        sweeps = [self.sweep(knobs, source, seed_offset=s, cost_scale=scale) for s, scale in runs]
        return [self._prediction(knobs, label, i, point, [sweep[i] for sweep in sweeps])
                for i, point in enumerate(source.load.points)]

    def _prediction(self, knobs: Knobs, label: str, index: int, point: LoadPoint,
                    runs: list[tuple[PointSummary, SimResult]]) -> PointPrediction:
        summary, result = runs[0]
        figures = {name: get(summary) for name, get in FIGURES.items()}
        intervals = {}
        for name, get in FIGURES.items():
            values = [v for v in (get(s) for s, _ in runs) if v is not None]
            if values:
                intervals[name] = (min(values), max(values))
        measured = max(1, summary.num_requests)
        return PointPrediction(
            knobs=knobs, label=label, index=index, load=point, summary=summary, figures=figures,
            intervals=intervals, shed_rate=summary.outcomes.get("shed", 0) / measured,
            prefix_hit_ratio=result.prefix_hit_tokens / result.prefix_query_tokens if result.prefix_query_tokens
            else None, num_preemptions=result.num_preemptions,
            outside_fraction=result.num_steps_outside / max(1, result.num_steps), num_steps=result.num_steps,
            engine_busy_s=result.busy_s, meets_slo=not self.settings.slo.is_empty and meets_slo(figures["attainment"], self.settings.min_attainment),
            cost_per_1m=cost_per_million_tokens(self.settings.price_per_hour, knobs.replicas,
                                                summary.output_tokens_per_s))

    def capacity(self, knobs: Knobs, label: str, rate_workload: RateWorkload, start_rate: float,
                 warmup: Warmup | None = None) -> Capacity:
        """Highest open-loop rate meeting the SLO for this configuration (fleet of knobs.replicas)."""
        at: dict[float, PointSummary] = {}

        def passes(rate: float) -> bool:
            workload, load = rate_workload(rate)
            summary, _ = self.simulate(knobs, workload, load, load.points[0], warmup=warmup)
            at[rate] = summary
            return meets_slo(_attainment(summary), self.settings.min_attainment)

        best = max_rate_meeting(passes, start_rate)
        tokens = at[best].output_tokens_per_s if best in at else 0.0
        return Capacity(knobs, label, best, tokens,
                        cost_per_million_tokens(self.settings.price_per_hour, knobs.replicas, tokens))

    def target(self, capacity: Capacity, rate_workload: RateWorkload, warmup: Warmup | None = None) -> TargetPlan:
        settings = self.settings
        assert settings.target_rate is not None
        rate = settings.target_rate * (1 + settings.headroom)
        tokens: dict[int, float] = {}

        def fleet_meets(n: int) -> bool:
            knobs = dataclasses.replace(capacity.knobs, replicas=n)
            workload, load = rate_workload(rate)
            summary, _ = self.simulate(knobs, workload, load, load.points[0], warmup=warmup)
            tokens[n] = summary.output_tokens_per_s
            return meets_slo(_attainment(summary), settings.min_attainment)

        n = replicas_needed(fleet_meets, settings.target_rate, capacity.per_replica, settings.headroom)
        cost = None if n is None else cost_per_million_tokens(settings.price_per_hour, n, tokens.get(n, 0.0))
        return TargetPlan(capacity.label, settings.target_rate, settings.headroom, n, cost)


def _attainment(summary: PointSummary) -> float | None:
    return None if summary.slo_attainment_pct is None else summary.slo_attainment_pct / 100


def _blocks(runs: Sequence[Warmup], knobs: Knobs) -> int:
    return sum(blocks_ever_needed(workload, load, knobs.block_size) for workload, load, _ in runs)


def build_plan(planner: Planner, cells: Sequence[Knobs], varied: Sequence[str], source: WorkloadSource,
               progress: Callable[[str], None] | None = None) -> Plan:
    """Predict every point of every configuration, then capacities, targets and the frontier."""
    say = progress or (lambda _: None)
    plan = Plan(points=[])
    load = source.load
    for knobs in cells:
        label = knobs.label(varied)
        say(f"simulating {label}")
        plan.points.extend(planner.predict(knobs, label, source))
    settings = planner.settings
    rate_workload = _rate_workload(source)
    if not settings.slo.is_empty and settings.find_capacity and rate_workload is not None:
        start = max((p.rate_per_s for p in load.points if p.rate_per_s and math.isfinite(p.rate_per_s)), default=1.0)
        for knobs in cells:
            say(f"searching the highest rate meeting the SLO for {knobs.label(varied)}")
            plan.capacities.append(planner.capacity(knobs, knobs.label(varied), rate_workload, start * knobs.replicas,
                                                    source.warmup(0)))
        if settings.target_rate is not None:
            singles = {dataclasses.replace(c.knobs, replicas=1): c for c in sorted(
                plan.capacities, key=lambda c: c.per_replica)}  # the best capacity per engine configuration
            for capacity in singles.values():
                say(f"replicas for {settings.target_rate:g} req/s with {capacity.label}")
                plan.targets.append(planner.target(capacity, rate_workload, source.warmup(0)))
    _mark_pareto(plan.points, with_cost=settings.price_per_hour is not None)
    outside = [p for p in plan.points if p.outside_fraction > 0]
    if outside:
        plan.notes.append(f"{len(outside)} of {len(plan.points)} points run steps beyond the profiled shapes "
                          "(the fit extrapolates there): profile with a larger grid to cover them")
    return plan


def _rate_workload(source: WorkloadSource) -> RateWorkload | None:
    if source.at_rate(1.0) is None:
        return None

    def at(rate: float) -> tuple[PointWorkload, LoadConfig]:
        found = source.at_rate(rate)
        assert found is not None
        return found

    return at


def _mark_pareto(points: Sequence[PointPrediction], *, with_cost: bool) -> None:
    """Latency (p99 TTFT), throughput (goodput per replica, else requests per replica) and cost."""
    values: list[list[float | None]] = []
    for p in points:
        served = p.figures["goodput_rps"] if p.figures["goodput_rps"] is not None else p.figures["throughput_rps"]
        row = [p.figures["ttft_p99_s"], None if served is None else served / p.knobs.replicas]
        if with_cost:
            row.append(p.cost_per_1m)
        values.append(row)
    maximize = [False, True] + ([False] if with_cost else [])
    for p, on_front in zip(points, pareto_front(values, maximize), strict=True):
        p.pareto = on_front
