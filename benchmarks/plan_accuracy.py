"""The capacity planner's accuracy: `servewise plan validate` over the issue's workloads and rates.

    python benchmarks/plan_accuracy.py [--profile profile.json] [--out bench-results/plan-accuracy]
                                       [--repeats 3] [--num-requests 100] [--workloads alpaca,shared-prefix,mixed]
                                       [--fractions 0.2,0.4,0.6,0.8,0.95] [--overload 1.5] [--skip-grid] [--quick]

For each workload (Alpaca chat; shared-prefix, 8 groups × 1,000-token system prompts;
mixed, 10% long prompts), on the embedded model with 2 threads:

1. the measured capacity: a closed loop of 16 clients against a fresh server (drafting and admission
   off) gives the requests per second it completes when saturated;
2. `servewise plan validate` at 5 Poisson rates from 20% to 95% of that capacity plus one
   overload point (150%), each measured --repeats times against `servewise serve`, and
   predicted by `servewise plan` from the profile;
3. on the Alpaca workload, a grid of 4 configurations (max_num_seqs × max_num_batched_tokens)
   at three rates: is the predicted best configuration the measured best?

Prints the machine, the commands, and the accuracy table against the issue's targets
(p50 within ±10%, p99 within ±20% or the run-to-run spread, throughput and goodput within
±5%, SLO pass/fail, the highest rate meeting the SLO within ±10%), with every miss listed.
Everything (profiles, plans, bench results, validation.md per workload) stays under --out.
Takes hours at the default sizes; --quick runs one repeat of 30 requests at three rates.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATASET_NAME = "alpaca_seed_tasks.jsonl"
SLO = "ttft=2s,tpot=150ms"
THREADS = "2"
WORKLOADS: dict[str, list[str]] = {
    "alpaca": ["--output-len", "fixed:128"],  # + --dataset
    "shared-prefix": ["--workload", "shared-prefix", "--num-prefix-groups", "8", "--prefix-len", "1000",
                      "--input-len", "uniform:32,128", "--output-len", "fixed:64"],
    "mixed": ["--workload", "mixed", "--long-fraction", "0.1", "--input-len", "uniform:64,256",
              "--long-input-len", "uniform:1500,3000", "--output-len", "fixed:64"],
}
SATURATING_CLIENTS = 16  # closed-loop clients that keep the server's batch full while capacity is measured
GRID = ["--grid", "max_num_seqs=4,32", "--grid", "max_num_batched_tokens=128,512"]


def find_dataset() -> Path:
    for base in (ROOT.parent, ROOT.parent.parent):
        candidate = base / "shared" / "data" / DATASET_NAME
        if candidate.is_file():
            return candidate
    raise SystemExit(f"cannot find shared/data/{DATASET_NAME} next to the repository; pass --dataset")


def servewise(*args: str, log: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "servewise.cli", *args]
    print("$ servewise " + " ".join(shlex.quote(a) for a in args), flush=True)
    if log is None:
        subprocess.run(cmd, check=True)
        return
    with log.open("w") as out:
        status = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    if status not in (0, 2):  # 2: a plan that meets no SLO is still a measurement
        raise SystemExit(f"servewise {args[0]} failed ({status}); see {log}")


def measured_capacity(workload: list[str], out: Path, num_requests: int) -> float:
    """Completed requests per second of a saturated server: a closed loop of SATURATING_CLIENTS
    keeps its batch full (admission off, so nothing is shed)."""
    from servewise.plan_cli.validate import served

    out.mkdir(parents=True, exist_ok=True)
    with served(["--threads", THREADS, "--admission", "off", "--speculative-ngram", "0"], out / "server.log") as base_url:
        servewise("bench", "--base-url", base_url, "--ignore-eos", "--concurrency", str(SATURATING_CLIENTS),
                  "--num-requests", str(num_requests), *workload, "--no-progress", "--output-dir", str(out),
                  log=out / "bench.log")
    result = json.loads((out / "results.json").read_text())
    capacity = float(result["points"][0]["summary"]["request_throughput_per_s"])
    if capacity <= 0:
        raise SystemExit(f"no request completed while measuring capacity; see {out / 'bench.log'}")
    return capacity


def validate(profile: Path, workload: list[str], rates: list[float], out: Path, args: argparse.Namespace,
             extra: list[str] = ()) -> dict[str, Any]:
    servewise("plan", "validate", "--profile", str(profile), "--threads", THREADS, *workload, *extra,
              "--rates", ",".join(f"{r:.3f}" for r in rates), "--num-requests", str(args.num_requests),
              "--warmup-requests", "5", "--slo", SLO, "--repeats", str(args.repeats), "--output-dir", str(out),
              log=out.with_suffix(".log"))
    return json.loads((out / "validation.json").read_text())


def _abs_errors(validation: dict[str, Any], name: str) -> list[float]:
    return [abs(f["error"]) for p in validation["points"] for f in p["figures"]
            if f["name"] == name and f["error"] is not None]


def accuracy_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    figures = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "throughput_rps", "goodput_rps")
    lines = ["| workload | " + " | ".join(f"{f} within / median abs err" for f in figures)
             + " | SLO pass/fail | highest rate meeting SLO |", "|---" * (len(figures) + 3) + "|"]
    for name, v in results.items():
        cells = []
        for f in figures:
            good, total = v["counts"].get(f, [0, 0])
            errors = _abs_errors(v, f)
            median = f"{100 * statistics.median(errors):.0f}%" if errors else "-"
            cells.append(f"{good}/{total}, {median}")
        decisions = v["counts"].get("SLO pass/fail", [0, 0])
        capacity = "; ".join(_capacity(c) for c in v["capacities"]) or "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {decisions[0]}/{decisions[1]} | {capacity} |")
    return lines


def _capacity(c: dict[str, Any]) -> str:
    error = "-" if c["error"] is None else f"{100 * c['error']:+.0f}%"
    bound = "≥" if c["measured_is_lower_bound"] else ""
    return f"pred {c['predicted']:.2f} vs meas {bound}{c['measured'] or 0:.2f} ({error})"


def misses(results: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name, v in results.items():
        for p in v["points"]:
            for f in p["figures"]:
                if f["ok"] is False:
                    spread = "-" if f["spread"] is None else f"{100 * f['spread']:.0f}%"
                    out.append(f"- {name} {p['label']} {p['load']}: {f['name']} predicted {f['predicted']:.4g}, "
                               f"measured {f['measured']:.4g} ({100 * f['error']:+.0f}%, run-to-run spread {spread})")
            if not p["decision_ok"]:
                out.append(f"- {name} {p['label']} {p['load']}: SLO predicted "
                           f"{'pass' if p['predicted_pass'] else 'fail'}, measured "
                           f"{'pass' if p['measured_pass'] else 'fail'}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", type=Path, help="an existing profile (default: run `servewise profile`)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/plan-accuracy"))
    parser.add_argument("--dataset", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-requests", type=int, default=100)
    parser.add_argument("--workloads", default="alpaca,shared-prefix,mixed")
    parser.add_argument("--fractions", default="0.2,0.4,0.6,0.8,0.95")
    parser.add_argument("--overload", type=float, default=1.5)
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 30 requests, rates at 30/60/90%% + overload")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.num_requests, args.fractions = 1, 30, "0.3,0.6,0.9"
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = args.dataset or find_dataset()
    WORKLOADS["alpaca"] = ["--dataset", str(dataset), *WORKLOADS["alpaca"]]
    print(f"machine: {platform.processor() or platform.machine()}, {platform.platform()}; python {platform.python_version()}")
    profile = args.profile
    if profile is None:
        profile = args.out / "profile.json"
        servewise("profile", "--threads", THREADS, "--output", str(profile))
    fractions = [float(f) for f in args.fractions.split(",")]
    results: dict[str, dict[str, Any]] = {}
    for name in args.workloads.split(","):
        workload = WORKLOADS[name]
        capacity = measured_capacity(workload, args.out / name / "capacity", max(40, args.num_requests))
        rates = [f * capacity for f in fractions] + [args.overload * capacity]
        print(f"{name}: measured capacity {capacity:.3f} req/s; rates {', '.join(f'{r:.3f}' for r in rates)}")
        results[name] = validate(profile, workload, rates, args.out / name / "validation", args)
    if not args.skip_grid:
        alpaca = WORKLOADS["alpaca"]
        capacity = measured_capacity(alpaca, args.out / "grid" / "capacity", max(40, args.num_requests))
        grid = validate(profile, alpaca, [0.4 * capacity, 0.8 * capacity, 1.2 * capacity],
                        args.out / "grid" / "validation", args, GRID)
        results["alpaca grid (4 configs)"] = grid
        print(f"best configuration: predicted {grid['predicted_best']}, measured {grid['measured_best']} "
              f"({'match' if grid['best_ok'] else 'MISMATCH'})")
    print("\n## Planner accuracy (servewise plan validate)\n")
    print("\n".join(accuracy_rows(results)))
    found = misses(results)
    print("\n### Misses\n")
    print("\n".join(found) if found else "none")
    (args.out / "accuracy.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
