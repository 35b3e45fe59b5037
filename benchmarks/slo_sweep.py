"""Latency-throughput sweeps under an SLO: ServeWise vs llama.cpp's server, then overload with
admission control on and off.

    python benchmarks/slo_sweep.py [--rates 0.5,1,2,4] [--duration-s 60] [--overload-duration-s 120]
                                   [--skip-peer] [--skip-overload] [--out bench-results/slo]
                                   [--servewise-args FLAGS] [--compare-args FLAGS]

Part 1 (the `servewise bench` issue): open-loop Poisson sweep on the Alpaca seed tasks
(`../shared/data/alpaca_seed_tasks.jsonl`, chat endpoint, max_tokens 128) with the SLO
TTFT ≤ 2 s and TPOT ≤ 150 ms, against `servewise serve` (admission off, so both servers
see the whole load) and against llama.cpp's `llama-server -np 8` (built for this CPU by
llama_cpp_peer.py) on the same GGUF with 2 threads. Prints each point and the highest rate
meeting the SLO (p99 TTFT and p99 TPOT within target) for both.

Part 2 (the SLO issue): open loop at 1×, 2× and 5× that rate on ServeWise, admission
enforced vs off: admitted TTFT p99 against the target, share shed with 429, goodput.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "alpaca_seed_tasks.jsonl"
TTFT_S, TPOT_S = 2.0, 0.150
PEER_SLOTS = 8  # llama-server -np: requests it decodes together; the rest queue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"not ready: {log.read_text()[-3000:]}")


def start_servewise(port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "servewise.cli", "serve", "--port", str(port), "--threads", "2",
           "--no-request-log", "--slo-class", f"interactive:ttft={TTFT_S}s@p99,tpot={int(TPOT_S * 1000)}ms", *extra]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_ready(f"http://127.0.0.1:{port}/ready", proc, log)
    return proc


def start_llama_cpp(port: int, log: Path) -> subprocess.Popen[bytes]:
    """llama.cpp's own llama-server, built for this CPU (llama_cpp_peer.py), 8 slots, 2 threads."""
    import llama_cpp_peer
    from servewise.loading import embedded_model_path

    bin_dir = llama_cpp_peer.build()
    if isinstance(bin_dir, str):
        raise RuntimeError(bin_dir)
    cmd = [str(bin_dir / "llama-server"), "-m", embedded_model_path(), "-t", "2", "-tb", "2", "-np", str(PEER_SLOTS),
           "-c", str(PEER_SLOTS * 2048), "--port", str(port), "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, LD_LIBRARY_PATH=str(bin_dir)))
    wait_ready(f"http://127.0.0.1:{port}/health", proc, log)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()


def bench(port: int, rates: list[float], duration_s: float, out: Path, tokenizer: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "servewise.cli", "bench", "--base-url", f"http://127.0.0.1:{port}/v1",
           "--endpoint", "chat", "--dataset", str(DATA), "--output-len", "fixed:128",
           "--rates", ",".join(str(r) for r in rates), "--duration-s", str(duration_s), "--warmup-s", "5",
           "--slo", f"ttft={TTFT_S}s,tpot={int(TPOT_S * 1000)}ms", "--seed", "0", "--no-progress",
           "--tokenizer", tokenizer, "--output-dir", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return json.loads((out / "results.json").read_text())


def point_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for point in result["points"]:
        s = point["summary"]
        n = max(1, s["num_requests"])
        shed = s["outcomes"].get("shed", 0)
        rows.append({
            "rate": point["load"].get("rate_per_s"), "ok": s["outcomes"].get("ok", 0), "n": s["num_requests"],
            "shed_pct": 100.0 * shed / n, "ttft_p50": s["ttft"]["p50_s"], "ttft_p99": s["ttft"]["p99_s"],
            "tpot_p50": s["tpot"]["p50_s"], "tpot_p99": s["tpot"]["p99_s"], "itl_p50": s["itl"]["p50_s"],
            "out_tok_s": s["output_tokens_per_s"], "goodput": s["goodput_per_s"],
            "attainment": s["slo_attainment_pct"],
            "meets": (s["ttft"]["p99_s"] or 1e9) <= TTFT_S and (s["tpot"]["p99_s"] or 1e9) <= TPOT_S
            and s["outcomes"].get("ok", 0) == s["num_requests"]})
    return rows


def fmt(x: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "—" if x is None else f"{x * scale:.{digits}f}"


def print_sweep(name: str, rows: list[dict[str, Any]]) -> float | None:
    print(f"\n### {name}\n")
    print("| rate (req/s) | ok/sent | TTFT p50 (s) | TTFT p99 (s) | TPOT p50 (ms) | TPOT p99 (ms) | output tok/s "
          "| goodput (req/s) | SLO attainment | meets SLO |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rate']} | {r['ok']}/{r['n']} | {fmt(r['ttft_p50'])} | {fmt(r['ttft_p99'])} | "
              f"{fmt(r['tpot_p50'], 1e3, 0)} | {fmt(r['tpot_p99'], 1e3, 0)} | {fmt(r['out_tok_s'], 1, 1)} | "
              f"{fmt(r['goodput'])} | {fmt(r['attainment'], 1, 0)}% | {'yes' if r['meets'] else 'no'} |")
    best = max((r["rate"] for r in rows if r["meets"]), default=None)
    print(f"\nHighest rate meeting the SLO: {best if best is not None else 'none of those tried'} req/s")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="0.5,1,2,4")
    parser.add_argument("--duration-s", type=float, default=60)
    parser.add_argument("--overload-duration-s", type=float, default=120)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-overload", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "slo"))
    parser.add_argument("--reuse", action="store_true", help="reuse results.json files already in --out")
    parser.add_argument("--servewise-args", default="", help="extra `servewise serve` flags, e.g. "
                        "'--max-num-batched-tokens 128'")
    parser.add_argument("--compare-args", default=None,
                        help="also sweep `servewise serve` with these flags instead and print the goodput ratio, "
                             "e.g. '--admission enforce --step-budget fixed' against --servewise-args "
                             "'--admission enforce'")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rates = [float(r) for r in args.rates.split(",")]
    print(f"Machine: {os.cpu_count()} cores; command: {' '.join(sys.argv)}; SLO TTFT ≤ {TTFT_S} s, "
          f"TPOT ≤ {TPOT_S * 1000:.0f} ms; Alpaca seed tasks, chat, max_tokens 128")
    extra = args.servewise_args.split()
    ours = point_rows(run_or_reuse(args.reuse, out / "servewise", lambda: sweep_servewise(
        rates, args.duration_s, out, "--admission", "off", *extra)))
    best = print_sweep(f"servewise serve (embedded SmolLM2-135M Q4_1, admission off {' '.join(extra)})", ours)
    if args.compare_args is not None:
        compare_sweeps(ours, rates, args.duration_s, out, args.compare_args.split(), args.reuse)
    if not args.skip_peer:
        try:
            peer_port = free_port()
            peer = start_llama_cpp(peer_port, out / "llama_cpp.log")
        except (RuntimeError, ImportError) as exc:
            print(f"\nllama.cpp server not available ({str(exc)[:200]}): skipped")
        else:
            try:
                theirs = point_rows(run_or_reuse(args.reuse, out / "llama_cpp", lambda: bench(
                    peer_port, rates, args.duration_s, out / "llama_cpp", "approx")))
            finally:
                stop(peer)
            peer_best = print_sweep(f"llama-server -np {PEER_SLOTS} (same GGUF, 2 threads)", theirs)
            for a, b in zip(ours, theirs, strict=True):
                ratio = a["out_tok_s"] / b["out_tok_s"] if b["out_tok_s"] else float("nan")
                print(f"rate {a['rate']}: output tok/s ratio servewise/llama.cpp = {ratio:.2f}")
            print(f"highest SLO-meeting rate: servewise {best}, llama.cpp {peer_best}")
    if not args.skip_overload:
        overload(best or rates[0], args.overload_duration_s, out, extra, args.reuse)


def run_or_reuse(reuse: bool, directory: Path, run: Any) -> dict[str, Any]:
    existing = directory / "results.json"
    if reuse and existing.exists():
        return dict(json.loads(existing.read_text()))
    return dict(run())


def sweep_servewise(rates: list[float], duration_s: float, out: Path, *flags: str) -> dict[str, Any]:
    port = free_port()
    proc = start_servewise(port, out / "servewise.log", *flags)
    try:
        return bench(port, rates, duration_s, out / "servewise", "server")
    finally:
        stop(proc)


def compare_sweeps(ours: list[dict[str, Any]], rates: list[float], duration_s: float, out: Path,
                   flags: list[str], reuse: bool) -> None:
    """The same sweep with other flags (a baseline), its table, and goodput ours / its per rate."""
    (out / "compare").mkdir(parents=True, exist_ok=True)
    theirs = point_rows(run_or_reuse(reuse, out / "compare" / "servewise", lambda: sweep_servewise(
        rates, duration_s, out / "compare", "--admission", "off", *flags)))
    print_sweep(f"servewise serve {' '.join(flags)} (the baseline)", theirs)
    for a, b in zip(ours, theirs, strict=True):
        ratio = a["goodput"] / b["goodput"] if b["goodput"] else float("inf")
        print(f"rate {a['rate']}: goodput {a['goodput']:.2f} vs {b['goodput']:.2f} req/s = {ratio:.2f}×")


def overload(base_rate: float, duration_s: float, out: Path, extra: list[str], reuse: bool) -> None:
    multiples = [1, 2, 5]
    table = []
    for mode in ("enforce", "off"):
        def run(mode: str = mode) -> dict[str, Any]:
            port = free_port()
            proc = start_servewise(port, out / f"overload-{mode}.log", "--admission", mode, *extra)
            try:
                return bench(port, [base_rate * m for m in multiples], duration_s, out / f"overload-{mode}", "server")
            finally:
                stop(proc)

        res = run_or_reuse(reuse, out / f"overload-{mode}", run)
        for m, row in zip(multiples, point_rows(res), strict=True):
            table.append((m, mode, row))
    print(f"\n### Overload: open loop at 1×, 2×, 5× of {base_rate} req/s, {duration_s:.0f} s each\n")
    print("| load | admission | admitted TTFT p99 (s) | TTFT target (s) | shed with 429 | goodput (req/s) | "
          "SLO attainment |")
    print("|---|---|---|---|---|---|---|")
    for m, mode, r in sorted(table, key=lambda t: (t[0], t[1])):
        print(f"| {m}× ({base_rate * m:g} req/s) | {mode} | {fmt(r['ttft_p99'])} | {TTFT_S} | {r['shed_pct']:.0f}% | "
              f"{fmt(r['goodput'])} | {fmt(r['attainment'], 1, 0)}% |")
    for m in multiples:
        on = next(r for mm, mode, r in table if mm == m and mode == "enforce")
        off = next(r for mm, mode, r in table if mm == m and mode == "off")
        ratio = (on["goodput"] or 0) / off["goodput"] if off["goodput"] else float("inf")
        print(f"{m}×: goodput with admission / without = {ratio:.2f}")


if __name__ == "__main__":
    main()
