"""The fleet (`servewise serve --replicas N`, Ray Serve) against its baselines, same machine, same run.

    python benchmarks/fleet.py [--only overhead,scaling,routing,failover] [--duration-s 90]
                               [--out bench-results/fleet]

1. overhead: 1 replica through Ray Serve vs plain `servewise serve`, both 1 thread: TTFT p50 at a
   light Poisson load and output throughput with 8 clients (Alpaca seed tasks, chat).
   Target: TTFT p50 + ≤ 10 ms, throughput ≥ 90%.
2. scaling: goodput under the SLO (TTFT 2 s, TPOT 150 ms) over a Poisson rate sweep, 2 replicas ×
   1 thread vs 1 replica × 1 thread, admission on. Target ≥ 1.8×.
3. routing: shared-prefix workload (8 groups × 1,000-token system prompts, 2 replicas whose KV
   cache holds about 6 of them): the ServeWise router vs Ray's power-of-two router vs Ray's
   PrefixCacheAffinityRouter. Prefix hit ratio = share of the measured requests served whose
   group prefix came from the cache (usage.prompt_tokens_details.cached_tokens ≥ 90% of it).
   Target: ≥ 0.9; p99 TTFT ≤ 0.5× power-of-two and no worse than Ray's prefix router.
4. failover: SIGKILL one of 2 replicas a third into a run. Target: no request that had not
   started fails; the streams that were cut are counted.

Every fleet runs on a fresh local Ray; the load tester is `servewise bench` in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench_client_capacity import machine
from slo_sweep import DATA, fmt, free_port, point_rows, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
SLO = "interactive:ttft=2s@p99,tpot=150ms,priority=0,slack=1.5"
KV_FOR_ROUTING = "140MiB"  # ~6,000 tokens of SmolLM2-135M K/V (fp16): 6 of the 8 prefixes


def start(out: Path, name: str, *flags: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = out / f"{name}.log"
    cmd = [sys.executable, "-m", "servewise.cli", "serve", "--port", str(port), "--no-request-log",
           "--slo-class", SLO, *flags]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    wait_ready(f"http://127.0.0.1:{port}/ready", proc, log, timeout_s=600)
    return proc, port


def bench(port: int, out: Path, *load: str, workload: tuple[str, ...] = ()) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "servewise.cli", "bench", "--base-url", f"http://127.0.0.1:{port}/v1",
           "--endpoint", "chat", "--slo", "ttft=2s,tpot=150ms", "--seed", "0", "--no-progress",
           "--tokenizer", "server", "--output-dir", str(out),
           *(workload or ("--dataset", str(DATA), "--output-len", "fixed:128")), *load]
    subprocess.run(cmd, check=True, capture_output=True)
    return dict(json.loads((out / "results.json").read_text()))


def with_server(out: Path, name: str, flags: list[str], run: Any) -> Any:
    proc, port = start(out, name, *flags)
    try:
        return run(port)
    finally:
        stop(proc)


# -- 1. overhead ------------------------------------------------------------------------------
def overhead(out: Path, duration_s: float) -> None:
    rows = {}
    for name, flags in (("plain", ["--threads", "1"]), ("fleet-1", ["--replicas", "1", "--replica-threads", "1"])):
        def run(port: int, name: str = name) -> tuple[dict[str, Any], dict[str, Any]]:
            light = bench(port, out / f"overhead-{name}-light", "--rate", "0.3", "--duration-s", str(duration_s),
                          "--warmup-requests", "3")
            heavy = bench(port, out / f"overhead-{name}-heavy", "--concurrency", "8", "--num-requests", "48",
                          "--warmup-requests", "8")
            return point_rows(light)[0], point_rows(heavy)[0]

        rows[name] = with_server(out, f"overhead-{name}", flags, run)
    (pl, ph), (fl, fh) = rows["plain"], rows["fleet-1"]
    print("\n### Overhead: 1 replica through Ray Serve vs plain `servewise serve` (1 thread each)\n")
    print("| | plain | fleet, 1 replica | difference | target |")
    print("|---|---|---|---|---|")
    print(f"| TTFT p50 at 0.3 req/s (ms) | {fmt(pl['ttft_p50'], 1e3, 0)} | {fmt(fl['ttft_p50'], 1e3, 0)} | "
          f"+{fmt((fl['ttft_p50'] or 0) - (pl['ttft_p50'] or 0), 1e3, 1)} ms | ≤ +10 ms |")
    print(f"| output tok/s, 8 clients | {fmt(ph['out_tok_s'], 1, 1)} | {fmt(fh['out_tok_s'], 1, 1)} | "
          f"{fmt(fh['out_tok_s'] / ph['out_tok_s'] * 100 if ph['out_tok_s'] else None, 1, 0)}% | ≥ 90% |")


# -- 2. scaling -------------------------------------------------------------------------------
def scaling(out: Path, duration_s: float, rates: str) -> None:
    best = {}
    for name, replicas in (("1x1", "1"), ("2x1", "2")):
        def run(port: int, name: str = name) -> list[dict[str, Any]]:
            return point_rows(bench(port, out / f"scaling-{name}", "--rates", rates, "--duration-s",
                                    str(duration_s), "--warmup-s", "5"))

        rows = with_server(out, f"scaling-{name}", ["--replicas", replicas, "--replica-threads", "1"], run)
        print(f"\n#### {name} (replicas × threads)\n")
        print("| rate | ok/sent | shed | TTFT p99 (s) | TPOT p99 (ms) | goodput (req/s) |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['rate']} | {r['ok']}/{r['n']} | {r['shed_pct']:.0f}% | {fmt(r['ttft_p99'])} | "
                  f"{fmt(r['tpot_p99'], 1e3, 0)} | {fmt(r['goodput'])} |")
        best[name] = max((r["goodput"] or 0) for r in rows)
    ratio = best["2x1"] / best["1x1"] if best["1x1"] else float("nan")
    print(f"\nScaling: best goodput 2 replicas {best['2x1']:.2f} req/s vs 1 replica {best['1x1']:.2f} req/s = "
          f"{ratio:.2f}× (target ≥ 1.8×)")


# -- 3. routing -------------------------------------------------------------------------------
PREFIX_LEN = 1000
ROUTING_WORKLOAD = ("--workload", "shared-prefix", "--num-prefix-groups", "8", "--prefix-len", str(PREFIX_LEN),
                    "--input-len", "fixed:48", "--output-len", "fixed:32")


def routing(out: Path, num_requests: int, rate: float) -> None:
    table = []
    for router in ("servewise", "pow2", "prefix-affinity"):
        def run(port: int, router: str = router) -> dict[str, Any]:
            res = bench(port, out / f"routing-{router}", "--rate", str(rate), "--num-requests", str(num_requests),
                        "--warmup-requests", "24", workload=ROUTING_WORKLOAD)
            row = point_rows(res)[0]
            served = [r for r in res["points"][0]["records"] if r["outcome"] == "ok" and not r["warmup"]]
            hits = sum(1 for r in served if (r["num_cached_tokens"] or 0) >= 0.9 * PREFIX_LEN)
            row["hit_ratio"] = hits / len(served) if served else 0.0
            return row

        flags = ["--replicas", "2", "--replica-threads", "1", "--kv-cache-memory", KV_FOR_ROUTING, "--router", router]
        table.append((router, with_server(out, f"routing-{router}", flags, run)))
    print(f"\n### Routing: shared prefix, 8 groups × {PREFIX_LEN} tokens, 2 replicas, KV {KV_FOR_ROUTING} each, "
          f"{rate} req/s\n")
    print("| router | prefix hit ratio | TTFT p50 (s) | TTFT p99 (s) | goodput (req/s) | ok/sent |")
    print("|---|---|---|---|---|---|")
    for router, r in table:
        print(f"| {router} | {r['hit_ratio']:.2f} | {fmt(r['ttft_p50'])} | {fmt(r['ttft_p99'])} | {fmt(r['goodput'])} "
              f"| {r['ok']}/{r['n']} |")
    ours, pow2, ray_prefix = (r for _, r in table)
    print(f"\np99 TTFT servewise / pow2 = {(ours['ttft_p99'] or 0) / (pow2['ttft_p99'] or 1):.2f} (target ≤ 0.5); "
          f"servewise / prefix-affinity = {(ours['ttft_p99'] or 0) / (ray_prefix['ttft_p99'] or 1):.2f} (target ≤ 1)")


# -- 4. failover ------------------------------------------------------------------------------
def failover(out: Path, duration_s: float) -> None:
    def run(port: int) -> dict[str, Any]:
        killer = threading.Thread(target=_kill_one_replica_after, args=(duration_s / 3,), daemon=True)
        killer.start()
        res = bench(port, out / "failover", "--rate", "1.5", "--duration-s", str(duration_s), "--warmup-requests", "0")
        killer.join()
        return res

    res = with_server(out, "failover", ["--replicas", "2", "--replica-threads", "1"], run)
    records = [r for p in res["points"] for r in p["records"]]
    not_started = [r for r in records if r["ttft_s"] is None and r["outcome"] not in ("ok", "shed")]
    cut = [r for r in records if r["ttft_s"] is not None and r["outcome"] != "ok"]
    counts: dict[str, int] = {}
    for r in records:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    print(f"\n### Failover: SIGKILL one of 2 replicas after {duration_s / 3:.0f} s of a {duration_s:.0f} s run "
          "at 1.5 req/s\n")
    print(f"requests: {len(records)}, outcomes {counts}")
    print(f"failed before their first token: {len(not_started)} (target 0); started streams cut: {len(cut)} "
          f"(each ended with an SSE error event naming the replica)")


def _kill_one_replica_after(delay_s: float) -> None:
    time.sleep(delay_s)
    pids = subprocess.run(["pgrep", "-f", "ServeReplica:servewise-v[0-9]*:Engine"], capture_output=True, text=True).stdout
    if pids.split():
        os.kill(int(pids.split()[0]), signal.SIGKILL)
        print(f"killed replica process {pids.split()[0]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="overhead,scaling,routing,failover")
    parser.add_argument("--duration-s", type=float, default=90)
    parser.add_argument("--rates", default="0.5,1,2,3", help="scaling sweep (req/s)")
    parser.add_argument("--routing-requests", type=int, default=120)
    parser.add_argument("--routing-rate", type=float, default=1.0)
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "fleet"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"Machine: {machine()}; "
          f"command: {' '.join(sys.argv)}; model: embedded SmolLM2-135M-Instruct Q4_1; SLO {SLO}")
    parts = set(args.only.split(","))
    if "overhead" in parts:
        overhead(out, args.duration_s)
    if "scaling" in parts:
        scaling(out, args.duration_s, args.rates)
    if "routing" in parts:
        routing(out, args.routing_requests, args.routing_rate)
    if "failover" in parts:
        failover(out, args.duration_s)


if __name__ == "__main__":
    main()
