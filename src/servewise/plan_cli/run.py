"""From ``servewise plan`` flags to a plan: profiles checked against this machine and model, the
grid expanded, the bench's requests rebuilt, the outputs written."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from servewise.bench.cli import load_config_from_args, workload_config_from_args
from servewise.bench.client import Endpoint
from servewise.bench.results import BenchResult
from servewise.bench.schedule import LoadConfig
from servewise.bench.slo import SloSpec
from servewise.bench.workloads import WorkloadConfig
from servewise.loading import load_checkpoint
from servewise.plan.charts import write_charts
from servewise.plan.decisions import closest_to_slo
from servewise.plan.knobs import Knobs, expand_grid, parse_grid, server_slo_class
from servewise.plan.machine import model_fingerprint, this_machine
from servewise.plan.planner import Plan, Planner, PlanSettings, ProfileSet, build_plan
from servewise.plan.profile import Profile
from servewise.plan.report import PlanContext, print_plan, render_markdown, write_json
from servewise.plan.sources import ReplayWorkloads, SweepWorkloads, WorkloadSource
from servewise.plan.workload import RequestFactory, ServerTokenizer, bench_run_of, replay

PLAN_FILE, REPORT_FILE = "plan.json", "report.md"


def _base_knobs(args: argparse.Namespace, threads: int) -> Knobs:
    return Knobs(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                 replicas=args.replicas, linear_backend=args.linear_backend, threads=args.threads or threads,
                 admission=args.admission == "enforce", queue_policy=args.queue_policy,
                 prefix_caching=not args.no_prefix_caching, block_size=args.block_size,
                 kv_cache_memory_bytes=args.kv_cache_memory, num_kv_blocks=args.num_kv_blocks,
                 kv_cache_dtype=args.kv_cache_dtype, max_model_len=args.max_model_len)


def _profile_line(p: Profile, engine_only: bool) -> str:
    serving = ("engine alone (no serving calibration)" if p.serving is None or engine_only
               else p.serving.describe())
    return (f"{p.backend.label} on {p.machine.cpu_model} ({' '.join(p.machine.isa) or 'no AVX'}), "
            f"{p.created_at}: {p.fit.num_samples} steps, R² {p.fit.r2:.3f}, MAPE {100 * p.fit.mape:.1f}%, "
            f"CV MAPE {100 * p.fit.cv_mape:.1f}%; {serving}")


SPECULATION_NOTE = ("speculative decoding is not simulated: the figures are for `servewise serve "
                    "--speculative-ngram 0`, which `plan validate` serves (the server's default drafts)")


@dataclass
class PlanRun:
    """Everything a plan (and its validation) needs, built and checked from the flags."""

    planner: Planner
    cells: list[Knobs]
    varied: list[str]
    source: WorkloadSource
    context: PlanContext
    workload: WorkloadConfig  # what the bench sends (validate runs it)
    endpoint: Endpoint
    tokenizer: str
    slo_class_flag: str | None  # the server's --slo-class for these targets
    model_path: str | None  # --model, for `servewise serve`

    @property
    def settings(self) -> PlanSettings:
        return self.planner.settings

    @property
    def load(self) -> LoadConfig:
        return self.source.load

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PlanRun:
        profiles = [Profile.load(path) for path in args.profile]
        checkpoint = load_checkpoint(args.model, weights=False)
        machine, fingerprint = this_machine(), model_fingerprint(checkpoint.path)
        notes = [f"profile {path} accepted with differences: {'; '.join(diffs)}" for path, p in
                 zip(args.profile, profiles, strict=True)
                 if (diffs := p.check(machine, fingerprint, allow_foreign=args.allow_foreign_profile))]
        notes.append(SPECULATION_NOTE)
        grid = parse_grid(args.grid)
        cells = expand_grid(_base_knobs(args, profiles[0].backend.threads), grid)
        profile_set = ProfileSet(profiles)
        for knobs in cells:
            profile_set.for_knobs(knobs)  # every configuration has its profile, before any simulation
        source, workload, endpoint, tokenizer, bench_slo = cls._source(args, checkpoint.tokenizer)
        slo = args.slo or bench_slo
        slo_class, flag = server_slo_class(slo, args.admission_slack)
        settings = PlanSettings(slo=slo, slo_class=slo_class, seeds=args.seeds, min_attainment=args.min_attainment / 100,
                                cost_error=args.cost_error, price_per_hour=args.price_per_hour,
                                target_rate=args.target_rate, headroom=args.headroom,
                                find_capacity=not args.no_capacity, engine_only=args.engine_only)
        cost_error = (f"± {100 * args.cost_error:g}%" if args.cost_error is not None
                      else "± the profile's cross-validated MAPE")
        context = PlanContext(
            model=checkpoint.model_name, profiles=[_profile_line(p, args.engine_only) for p in profiles],
            workload=f"{workload.kind.value} ({args.from_bench or 'bench flags'}), {endpoint.value} endpoint",
            load=", ".join(p.label for p in source.load.points) + (
                f"; {source.load.num_requests} requests per point" if source.load.num_requests else
                f"; {source.load.duration_s:g} s per point") + f"; burstiness {source.load.burstiness:g}",
            slo=slo.describe() if not slo.is_empty else "none", min_attainment=settings.min_attainment,
            seeds=settings.seeds, cost_error=cost_error, varied=list(grid), notes=notes)
        return cls(Planner(profile_set, checkpoint.arch, settings), cells, list(grid), source, context, workload,
                   endpoint, tokenizer, flag, args.model)

    @staticmethod
    def _source(args: argparse.Namespace, tokenizer: ServerTokenizer
                ) -> tuple[WorkloadSource, WorkloadConfig, Endpoint, str, SloSpec]:
        if args.from_bench:
            result = BenchResult.load(args.from_bench)
            run = bench_run_of(result)
            factory = RequestFactory(run.workload, tokenizer, endpoint=run.endpoint, counter=run.tokenizer)
            return (ReplayWorkloads(replay(result, factory, run), run.load), run.workload, run.endpoint,
                    run.tokenizer, run.slo)
        workload = workload_config_from_args(args)
        endpoint = Endpoint(args.endpoint)
        factory = RequestFactory(workload, tokenizer, endpoint=endpoint, counter=args.tokenizer)
        return SweepWorkloads(factory, load_config_from_args(args)), workload, endpoint, args.tokenizer, SloSpec()

    def plan(self, progress: Callable[[str], None] | None = None) -> Plan:
        return build_plan(self.planner, self.cells, self.varied, self.source, progress)

    def print(self, plan: Plan, console: Console) -> None:
        print_plan(plan, self.context, console)

    def write(self, plan: Plan, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(plan, self.context, out_dir / PLAN_FILE)
        charts = write_charts(plan, self.settings.slo, out_dir)
        (out_dir / REPORT_FILE).write_text(render_markdown(plan, self.context, [c.name for c in charts]),
                                           encoding="utf-8")
        return [out_dir / PLAN_FILE, *charts, out_dir / REPORT_FILE]

    def unmet_slo_message(self, plan: Plan) -> str | None:
        """None, or why no simulated point meets the SLO, naming the closest one."""
        if self.settings.slo.is_empty or any(p.meets_slo for p in plan.points) or not plan.points:
            return None
        i = closest_to_slo([p.figures["attainment"] for p in plan.points],
                           [p.figures["ttft_p99_s"] for p in plan.points])
        p = plan.points[i]
        attainment = p.figures["attainment"]
        ttft, tpot = p.figures["ttft_p99_s"], p.figures["tpot_p99_s"]
        return (f"no point meets the SLO ({self.context.slo}, ≥ {100 * self.settings.min_attainment:g}% of requests); "
                f"the closest is {p.label} at {p.load.label}: {100 * (attainment or 0):.1f}% of requests within it, "
                f"p99 TTFT {'-' if ttft is None else f'{ttft:.2f} s'}, "
                f"p99 TPOT {'-' if tpot is None else f'{tpot * 1e3:.0f} ms'}, shed {100 * p.shed_rate:.1f}%")
