"""How fast the capacity planner simulates: one hour of Alpaca chat traffic at 2 req/s.

    python benchmarks/plan_speed.py --profile profile.json [--rate 2] [--duration-s 3600] [--replicas 1]

The issue's target: one hour of simulated traffic at 2 req/s in ≤ 30 s on the project's
2-core machine (a planner slower than a load test is not used). Prints the machine, the
time to build the requests (the bench's own workload code and the model's tokenizer) and
the time of one simulation, against the simulated hour.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from servewise.bench.distributions import parse_length
from servewise.bench.schedule import LoadConfig, sweep
from servewise.bench.slo import SloSpec
from servewise.bench.workloads import WorkloadConfig, WorkloadKind
from servewise.loading import load_checkpoint
from servewise.plan.knobs import Knobs, server_slo_class
from servewise.plan.planner import Planner, PlanSettings, ProfileSet
from servewise.plan.profile import Profile
from servewise.plan.workload import RequestFactory

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--dataset", type=Path, default=next(
        (p for p in (ROOT.parent / "shared/data/alpaca_seed_tasks.jsonl",
                     ROOT.parent.parent / "shared/data/alpaca_seed_tasks.jsonl") if p.is_file()), None))
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--duration-s", type=float, default=3600.0)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    profile = Profile.load(args.profile)
    checkpoint = load_checkpoint(None, weights=False)
    slo = SloSpec(ttft_s=2.0, tpot_s=0.15)
    load = LoadConfig(sweep(rates=[args.rate]), num_requests=None, duration_s=args.duration_s)
    workload = WorkloadConfig(kind=WorkloadKind.DATASET, dataset_path=str(args.dataset),
                              output_len=parse_length("fixed:128"))
    start = time.perf_counter()
    requests = RequestFactory(workload, checkpoint.tokenizer).point(0, load.points[0], load)
    build_s = time.perf_counter() - start
    planner = Planner(ProfileSet([profile]), checkpoint.arch,
                      PlanSettings(slo=slo, slo_class=server_slo_class(slo)[0], seeds=1))
    knobs = Knobs(threads=profile.backend.threads, linear_backend=profile.backend.linear_backend,
                  replicas=args.replicas)
    start = time.perf_counter()
    summary, result = planner.simulate(knobs, requests, load, load.points[0])
    sim_s = time.perf_counter() - start
    print(f"machine: {platform.processor() or platform.machine()}; profile: {profile.backend.label} on "
          f"{profile.machine.cpu_model}")
    print("| simulated | requests | engine steps | build requests | simulate | steps/s | speed-up vs real time |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.duration_s:g} s at {args.rate:g} req/s, {args.replicas} replica(s) | {len(requests.requests)} "
          f"| {result.num_steps} | {build_s:.1f} s | {sim_s:.1f} s | {result.num_steps / sim_s:,.0f} "
          f"| {result.end_s / sim_s:,.0f}× |")
    print(f"predicted: TTFT p50 {summary.ttft.p50_s:.3f} s, p99 {summary.ttft.p99_s:.3f} s; "
          f"TPOT p50 {summary.tpot.p50_s * 1e3:.0f} ms; goodput {summary.goodput_per_s:.2f} req/s")


if __name__ == "__main__":
    main()
