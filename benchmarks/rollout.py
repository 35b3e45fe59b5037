"""Rollouts under a steady Alpaca load on a local fleet, against their baselines in the same run.

    python benchmarks/rollout.py [--duration-s 180] [--rate 1.0] [--out bench-results/rollout]

1. A bad candidate (+300 ms per engine step) through two rollouts over the same steps: SLO-gated
   (the default gate), and a fixed schedule (the same steps, promoted on time whatever happens:
   tolerances no candidate can exceed, as a plain weighted split does). For each: the share of
   requests that reached the bad version, and the SLO attainment against a run with no rollout.
   Target: SLO-gated ≤ 2 % of requests touched the bad version.
2. Time to decide: from start to rollback (bad candidate) and to 100 % (an identical one).
3. Shadow cost: the baseline's p99 TTFT while 10 % of requests are mirrored, against no shadow.
   Target ≤ +5 %.

Each part starts `servewise serve --replicas 1` (embedded SmolLM2, 1 thread per replica) on a fresh
local Ray and loads it with `servewise bench` (Alpaca seed tasks, Poisson arrivals, max_tokens 64).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench_client_capacity import machine
from slo_sweep import DATA, fmt, free_port, point_rows, stop, wait_ready

ADMIN = "/v1/admin/rollout"  # an empty path on a base URL would get a trailing slash (a 307)
ROOT = Path(__file__).resolve().parent.parent
SLO = "interactive:ttft=2s@p99,tpot=150ms,priority=0,slack=1.5"
STEPS = [10, 25, 50, 100]
BAD = ["--fault-step-delay-ms", "300"]
STEP_S = 30  # the fixed schedule's step length (and the gated rollout's minimum)


def start_fleet(out: Path, name: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = out / f"{name}.log"
    cmd = [sys.executable, "-m", "servewise.cli", "serve", "--replicas", "1", "--replica-threads", "1",
           "--port", str(port), "--no-request-log", "--slo-class", SLO]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_ready(f"http://127.0.0.1:{port}/ready", proc, log, timeout_s=600)
    return proc, port


def load(port: int, out: Path, duration_s: float, rate: float) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "servewise.cli", "bench", "--base-url", f"http://127.0.0.1:{port}/v1",
           "--endpoint", "chat", "--dataset", str(DATA), "--output-len", "fixed:64", "--rate", str(rate),
           "--duration-s", str(duration_s), "--slo", "ttft=2s,tpot=150ms", "--seed", "0", "--no-progress",
           "--tokenizer", "server", "--output-dir", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(bench: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    bench.wait()
    return dict(point_rows(json.loads((out / "results.json").read_text()))[0])


def admin(port: int) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900)


def per_version(port: int) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text.splitlines():
        if line.startswith("servewise:rollout_requests_total{"):
            version = line.split('version="')[1].split('"')[0]
            counts[version] = counts.get(version, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def wait_phase(client: httpx.Client, phases: set[str], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rollout = client.get(ADMIN).json()["rollout"]
        if rollout and rollout["phase"] in phases:
            return dict(rollout)
        time.sleep(1)
    return dict(client.get(ADMIN).json()["rollout"] or {})


def spec(engine_args: list[str], gated: bool) -> dict[str, Any]:
    analysis: dict[str, Any] = {"window": "5s", "min_samples": 20}
    if not gated:  # a plain weighted split: nothing the candidate does can hold it back
        analysis.update(attainment_tolerance=0.99, error_tolerance=0.99, shed_tolerance=0.99,
                        p99_ratio_tolerance=1e6, p99_min_delta="1h", min_samples=1)
    return {"steps": STEPS, "step_min_duration": f"{STEP_S}s", "step_min_requests": 0 if not gated else 20,
            "candidate": {"engine_args": engine_args}, "analysis": analysis}


def bad_canary(out: Path, duration_s: float, rate: float) -> None:
    rows = {}
    for name in ("no rollout", "SLO-gated", "fixed schedule"):
        proc, port = start_fleet(out, f"bad-{name.split()[0]}")
        try:
            bench = load(port, out / f"bad-{name.split()[0]}", duration_s, rate)
            time.sleep(10)
            if name != "no rollout":
                with admin(port) as c:
                    c.post(ADMIN, json=spec(BAD, gated=name == "SLO-gated")).raise_for_status()
            row = finish(bench, out / f"bad-{name.split()[0]}")
            counts = per_version(port)
            total = sum(counts.values()) or 1.0
            row["bad_share"] = sum(v for k, v in counts.items() if k != "v1") / total
            rows[name] = row
        finally:
            stop(proc)
    print(f"\n### A bad candidate (+300 ms per step), steps {STEPS} %, {duration_s:.0f} s of Alpaca at {rate} req/s\n")
    print("| rollout | requests that reached the bad version | SLO attainment | TTFT p99 (s) | TPOT p99 (ms) |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r.get('bad_share', 0) * 100:.1f} % | {fmt(r['attainment'], 1, 1)} % | "
              f"{fmt(r['ttft_p99'])} | {fmt(r['tpot_p99'], 1e3, 0)} |")
    print("\nTarget: SLO-gated ≤ 2 % of requests touched the bad version.")


def time_to_decide(out: Path, rate: float) -> None:
    proc, port = start_fleet(out, "decide")
    results = []
    try:
        bench = load(port, out / "decide", 900, rate)
        time.sleep(10)
        with admin(port) as c:
            for name, args, phases in (("bad: start -> rolled back", BAD, {"rolled_back"}),
                                       ("identical: start -> 100 % (promoted)", [], {"promoted"})):
                started = time.monotonic()
                c.post(ADMIN, json=spec(args, gated=True)).raise_for_status()
                deployed = time.monotonic()
                rollout = wait_phase(c, phases | {"rolled_back", "promoted", "aborted"}, 600)
                results.append((name, deployed - started, time.monotonic() - deployed, rollout.get("phase")))
        bench.terminate()
    finally:
        stop(proc)
    print(f"\n### Time to decide (gated, steps {STEPS} %, ≥ {STEP_S} s and 20 requests per step, window 5 s)\n")
    print("| candidate | deploy (s) | deployed -> decision (s) | outcome |")
    print("|---|---|---|---|")
    for name, deploy_s, decide_s, phase in results:
        print(f"| {name} | {deploy_s:.0f} | {decide_s:.0f} | {phase} |")


def shadow_cost(out: Path, duration_s: float, rate: float) -> None:
    rows = {}
    for name in ("no shadow", "shadow 10 %"):
        proc, port = start_fleet(out, f"shadow-{name.split()[0]}")
        try:
            if name != "no shadow":
                with admin(port) as c:
                    c.post(ADMIN, json={"mode": "shadow", "shadow": {"sample": 0.1, "duration": f"{duration_s + 60}s"}}
                           ).raise_for_status()
            rows[name] = finish(load(port, out / f"shadow-{name.split()[0]}", duration_s, rate),
                                out / f"shadow-{name.split()[0]}")
            if name != "no shadow":
                with admin(port) as c:
                    rows[name]["report"] = c.get(ADMIN).json().get("shadow", {})
        finally:
            stop(proc)
    base, shadowed = rows["no shadow"], rows["shadow 10 %"]
    overhead = (shadowed["ttft_p99"] or 0) / (base["ttft_p99"] or 1) - 1
    report = shadowed.get("report") or {}
    print(f"\n### Shadow cost: 10 % mirrored to an identical version, {duration_s:.0f} s at {rate} req/s\n")
    print("| | TTFT p50 (s) | TTFT p99 (s) | SLO attainment |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {fmt(r['ttft_p50'])} | {fmt(r['ttft_p99'])} | {fmt(r['attainment'], 1, 1)} % |")
    print(f"\np99 TTFT overhead of shadowing: {overhead * 100:+.1f} % (target ≤ +5 %); mirrored "
          f"{report.get('num_mirrored')} (skipped {report.get('num_skipped')}), greedy exact match "
          f"{report.get('greedy', {}).get('exact_match_rate')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="bad,decide,shadow")
    parser.add_argument("--duration-s", type=float, default=180)
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "rollout"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"Machine: {machine()}; command: {' '.join(sys.argv)}; SLO {SLO}")
    parts = set(args.only.split(","))
    if "bad" in parts:
        bad_canary(out, args.duration_s, args.rate)
    if "decide" in parts:
        time_to_decide(out, args.rate)
    if "shadow" in parts:
        shadow_cost(out, args.duration_s, args.rate)


if __name__ == "__main__":
    main()
