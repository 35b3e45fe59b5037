"""``servewise profile``, ``servewise plan`` and ``servewise plan validate``: the CLI glue.

This is the CLI layer (flags, files, processes); the decisions live in ``servewise.plan``.
``run.py`` turns flags into a plan, ``validate.py`` serves and benches each configuration.
Bad input (an unusable profile, an empty grid, an SLO no point meets) exits with status 2
and one line saying why. Heavy imports wait until a command runs, so ``servewise serve``
does not pay for them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROFILE_EPILOG = """\
examples:
  servewise profile --output profile.json                     # the embedded model, about two minutes
  servewise profile --linear-backend fp32 --threads 2 --output profile-fp32.json
"""
PLAN_EPILOG = """\
examples:
  servewise plan --profile profile.json --dataset ../shared/data/alpaca_seed_tasks.jsonl --output-len fixed:128 \\
      --rates 0.25,0.5,1,1.5 --slo ttft=2s,tpot=150ms --output-dir plan-results
  servewise plan --profile profile.json --workload shared-prefix --rates 0.5,1 --slo ttft=2s,tpot=150ms \\
      --grid max_num_seqs=16,64 --grid max_num_batched_tokens=256,512 --target-rate 10 --price-per-hour 0.5
  servewise plan --profile profile.json --from-bench bench-results/run1/results.json --slo ttft=2s,tpot=150ms
  servewise plan validate --profile profile.json --dataset ../shared/data/alpaca_seed_tasks.jsonl \\
      --output-len fixed:64 --rates 0.2,0.4 --num-requests 30 --slo ttft=2s,tpot=150ms --output-dir validation
"""
GRID_HELP = ("vary a knob: max_num_seqs, max_num_batched_tokens, replicas, linear_backend, threads, admission, "
             "queue_policy, prefix_caching, block_size, num_kv_blocks (repeatable)")


def add_profile_parser(sub: Any, add_engine_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """``servewise profile``: an engine command, with the engine's own flags."""
    profile = sub.add_parser("profile", help="measure this machine's step costs for the capacity planner",
                             epilog=PROFILE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(profile)
    profile.add_argument("--output", required=True, help="profile.json to write")
    profile.add_argument("--quick", action="store_true", help="a reduced grid (a smoke check, a rougher fit)")
    profile.add_argument("--max-context", type=int, default=2048, help="longest context measured (tokens)")
    profile.add_argument("--repeats", type=int, default=None, help="measurements per step shape")
    profile.add_argument("--serving-requests", type=int, default=None, metavar="N",
                         help="requests served through `servewise serve` to calibrate the server's own "
                              "overhead (default 32; 16 with --quick)")
    profile.add_argument("--no-serving", action="store_true",
                         help="skip the serving calibration: plans then simulate the engine alone")
    profile.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    from servewise.cli import engine_config
    from servewise.engine.llm_engine import LLMEngine
    from servewise.plan.profiler import ProfileGrid, run_profile

    config = engine_config(args)
    if config.speculative.enabled:  # drafting is not part of the step-cost model: profile plain steps
        config = dataclasses.replace(config, speculative=dataclasses.replace(config.speculative,
                                                                           num_speculative_tokens=0))
    engine = LLMEngine(config)
    try:
        grid = ProfileGrid.default(config.scheduler.max_num_batched_tokens, config.scheduler.max_num_seqs,
                                   min(args.max_context, engine.max_model_len - 2), quick=args.quick)
        if args.repeats is not None:
            grid = dataclasses.replace(grid, repeats=args.repeats)
    except ValueError as exc:
        print(f"servewise profile: error: {exc}", file=sys.stderr)
        return 2
    profile = run_profile(engine, config, grid, seed=args.seed, progress=_say)
    if not args.no_serving:
        from servewise.plan_cli.serving import calibrate_serving

        started = time.perf_counter()
        num_requests = args.serving_requests or (16 if args.quick else 32)
        try:
            profile = calibrate_serving(profile, config, engine.tokenizer, num_requests=num_requests,
                                        max_model_len=engine.max_model_len, model_path=args.model, say=_say)
        except (RuntimeError, ValueError) as exc:
            print(f"servewise profile: error: the serving calibration failed: {exc} "
                  "(--no-serving skips it)", file=sys.stderr)
            return 1
        profile = dataclasses.replace(profile, duration_s=profile.duration_s + time.perf_counter() - started)
    profile.save(args.output)
    fit = profile.fit
    print(f"profiled {profile.model.name} ({profile.backend.label}) on {profile.machine.cpu_model} in "
          f"{profile.duration_s:.0f} s: {fit.num_samples} steps, R² {fit.r2:.3f}, MAPE {100 * fit.mape:.1f}%, "
          f"cross-validated MAPE {100 * fit.cv_mape:.1f}%; host overhead MAPE {100 * profile.host_mape:.0f}%")
    if profile.serving is not None:
        print(profile.serving.describe())
    print(f"wrote {args.output}")
    return 0


def _knob_args(p: argparse.ArgumentParser) -> None:
    """The engine knobs a plan varies: the server's flags, same names and defaults."""
    from servewise.cli import parse_size

    g = p.add_argument_group("configuration (the server's flags; --grid varies them)")
    g.add_argument("--model", default=None, help="GGUF file or HF directory (default: the embedded SmolLM2)")
    g.add_argument("--linear-backend", default="auto", choices=["auto", "fp32", "int8"])
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: the first profile's)")
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--kv-cache-memory", type=parse_size, default=parse_size("1GiB"))
    g.add_argument("--num-kv-blocks", type=int, default=None)
    g.add_argument("--no-prefix-caching", action="store_true")
    g.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    g.add_argument("--max-num-seqs", type=int, default=64)
    g.add_argument("--max-num-batched-tokens", type=int, default=512)
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--queue-policy", default="fcfs", choices=["fcfs", "priority"])
    g.add_argument("--admission", default="enforce", choices=["enforce", "off"])
    g.add_argument("--replicas", type=int, default=1, help="engines behind the fleet's router")


def build_plan_parser() -> argparse.ArgumentParser:
    from servewise.bench.cli import add_load_args, add_workload_args
    from servewise.bench.client import Endpoint

    p = argparse.ArgumentParser(prog="servewise plan", epilog=PLAN_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Capacity planner: the engine's own scheduler on measured step costs.")
    p.add_argument("mode", nargs="?", choices=["validate"],
                   help="validate: also serve each configuration and bench it at the same points")
    p.add_argument("--profile", action="append", required=True, metavar="FILE",
                   help="from `servewise profile`; one per linear backend / thread count the grid uses")
    p.add_argument("--allow-foreign-profile", action="store_true",
                   help="plan with a profile measured on another machine or model (noted in the report)")
    _knob_args(p)
    add_workload_args(p)
    add_load_args(p)
    w = p.add_argument_group("plan")
    w.add_argument("--endpoint", choices=[e.value for e in Endpoint], default="chat")
    w.add_argument("--from-bench", metavar="RESULTS", help="replay a bench results.json (send times, output lengths)")
    w.add_argument("--slo", type=_slo, help="e.g. ttft=2s,tpot=150ms: what a good request is")
    w.add_argument("--admission-slack", type=float, default=1.0, help="the SLO class's admission slack (≥ 1)")
    w.add_argument("--min-attainment", type=float, default=99.0, help="%% of requests meeting the SLO for a pass")
    w.add_argument("--grid", action="append", default=[], metavar="KNOB=V1,V2", help=GRID_HELP)
    w.add_argument("--seeds", type=int, default=3, help="runs per point for the prediction intervals")
    w.add_argument("--cost-error", type=float, default=None,
                   help="± step-cost error of the intervals (default: the profile's cross-validated MAPE)")
    w.add_argument("--target-rate", type=float, help="req/s the fleet must serve: how many replicas")
    w.add_argument("--headroom", type=float, default=0.2, help="spare capacity at the target rate (default 0.2)")
    w.add_argument("--price-per-hour", type=float, help="$ per replica-hour: cost per 1M output tokens")
    w.add_argument("--no-capacity", action="store_true", help="skip the search for the highest rate meeting the SLO")
    w.add_argument("--engine-only", action="store_true",
                   help="ignore the profile's serving calibration: simulate the engine alone, as if no HTTP "
                        "server or client shared its cores")
    w.add_argument("--output-dir", help="write plan.json, report.md and PNG charts here")
    v = p.add_argument_group("validate")
    v.add_argument("--base-url", help="bench this server instead of starting `servewise serve` per configuration")
    v.add_argument("--repeats", type=int, default=3, help="bench runs per configuration")
    v.add_argument("--serve-arg", action="append", default=[], metavar="FLAG",
                   help="extra flag for `servewise serve`, e.g. --serve-arg=--kv-cache-memory=512MiB (repeatable)")
    return p


def _slo(text: str) -> Any:
    from servewise.bench.slo import parse_slo

    try:
        return parse_slo(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _say(message: str) -> None:
    print(f"servewise: {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    """Entry point of ``servewise plan ...``; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # two cores: no tokenizer thread pool
    logging.basicConfig(level=logging.WARNING, format="servewise plan: %(message)s")
    args = build_plan_parser().parse_args(argv)
    if args.mode == "validate" and not args.output_dir:
        args.output_dir = "plan-validation"
    from rich.console import Console

    from servewise.plan_cli.run import PlanRun

    try:
        run = PlanRun.from_args(args)
        plan = run.plan(progress=_say)
    except (ValueError, OSError) as exc:  # ProfileError, bad grids, workloads, files
        print(f"servewise plan: error: {exc}", file=sys.stderr)
        return 2
    console = Console(width=None if sys.stdout.isatty() else 240)
    run.print(plan, console)
    if args.output_dir:
        files = run.write(plan, Path(args.output_dir))
        console.print(f"wrote {', '.join(f.name for f in files)} to {args.output_dir}")
    unmet = run.unmet_slo_message(plan)
    if unmet is not None:
        print(f"servewise plan: error: {unmet}", file=sys.stderr)
    if args.mode == "validate":
        from servewise.plan_cli.validate import validate

        try:
            validate(run, plan, args, console, progress=_say)
        except (ValueError, OSError, RuntimeError) as exc:
            print(f"servewise plan validate: error: {exc}", file=sys.stderr)
            return 2
    return 2 if unmet is not None else 0
