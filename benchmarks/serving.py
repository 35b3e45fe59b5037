"""HTTP serving vs the offline engine at the same concurrency, on the embedded model.

    python benchmarks/serving.py [--concurrencies 1,8,32] [--requests-per-client 4] [--output-len 128]

For each concurrency C: a closed loop of C streaming clients (`servewise bench`,
completions endpoint, 128-token prompts cut from real text, 128 output tokens,
ignore_eos) against `servewise serve`; then the same closed loop of C clients on the
engine's in-process AsyncEngine, without HTTP (same engine config, same lengths). Prints
TTFT and ITL p50/p99 and output tok/s side by side, the HTTP/offline throughput ratio
and the p50 ITL the server adds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent


def start_server(port: int, log: Path) -> subprocess.Popen[bytes]:
    import httpx

    # Admission off: this measures what HTTP adds, so the server must take the whole closed loop
    # (with admission on, 32 clients retrying at once are shed as they should be). No prefix
    # caching on either side: the bench's prompts share text, the offline side's random ones don't.
    cmd = [sys.executable, "-m", "servewise.cli", "serve", "--port", str(port), "--threads", "2",
           "--no-request-log", "--admission", "off", "--no-prefix-caching"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(log.read_text())


def bench_http(port: int, concurrency: int, num_requests: int, output_len: int, out_dir: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "servewise.cli", "bench", "--base-url", f"http://127.0.0.1:{port}/v1",
           "--endpoint", "completions", "--workload", "synthetic", "--input-len", "fixed:128",
           "--output-len", f"fixed:{output_len}", "--ignore-eos", "--concurrency", str(concurrency),
           "--num-requests", str(num_requests), "--warmup-requests", str(concurrency), "--seed", "0",
           "--no-progress", "--output-dir", str(out_dir)]
    subprocess.run(cmd, check=True, capture_output=True)
    data = json.loads((out_dir / "results.json").read_text())
    summary = data["points"][0]["summary"]
    return {"ttft_p50": summary["ttft"]["p50_s"], "ttft_p99": summary["ttft"]["p99_s"],
            "itl_p50": summary["itl"]["p50_s"], "itl_p99": summary["itl"]["p99_s"],
            "tok_s": summary["output_tokens_per_s"]}


def bench_offline(concurrency: int, num_requests: int, output_len: int, prompt_len: int = 128) -> dict[str, Any]:
    """The same closed loop without HTTP: C asyncio clients on the in-process AsyncEngine."""
    import asyncio

    import torch

    from servewise.config import CacheConfig, DeviceConfig, EngineConfig
    from servewise.engine.async_engine import AsyncEngine
    from servewise.engine.llm_engine import LLMEngine
    from servewise.types import SamplingParams

    torch.set_num_threads(2)
    engine = AsyncEngine(LLMEngine(EngineConfig(device=DeviceConfig(num_threads=2),
                                                 cache=CacheConfig(enable_prefix_caching=False))))
    rng = np.random.default_rng(0)
    params = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=1.0)
    ttfts: list[float] = []
    itls: list[float] = []
    counter = iter(range(10**9))

    async def one(measure: bool) -> int:
        i = next(counter)
        start = time.monotonic()
        last, tokens = None, 0
        async for out in engine.generate(f"r{i}", rng.integers(200, 40000, prompt_len).tolist(), params):
            now = time.monotonic()
            if out.outputs and out.outputs[0].token_ids:
                if last is None and measure:
                    ttfts.append(now - start)
                elif measure:
                    itls.append(now - last)
                last = now
                tokens += len(out.outputs[0].token_ids)
        return tokens

    async def client(requests: int, measure: bool) -> int:
        return sum([await one(measure) for _ in range(requests)])

    async def run() -> float:
        engine.start()
        await asyncio.gather(*(client(1, False) for _ in range(concurrency)))  # warm-up round
        t = time.monotonic()
        per_client = max(1, num_requests // concurrency)
        tokens = sum(await asyncio.gather(*(client(per_client, True) for _ in range(concurrency))))
        elapsed = time.monotonic() - t
        engine.shutdown()
        return tokens / elapsed

    try:  # the server runs on uvloop; so does this side, when it is installed
        import uvloop

        tok_s = uvloop.run(run())
    except ImportError:
        tok_s = asyncio.run(run())
    return {"ttft_p50": float(np.percentile(ttfts, 50)), "ttft_p99": float(np.percentile(ttfts, 99)),
            "itl_p50": float(np.percentile(itls, 50)), "itl_p99": float(np.percentile(itls, 99)), "tok_s": tok_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrencies", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrencies.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="servewise-serving-"))
    http: dict[int, dict[str, Any]] = {}
    proc = start_server(args.port, tmp / "server.log")
    try:
        for c in concurrencies:
            http[c] = bench_http(args.port, c, c * args.requests_per_client, args.output_len, tmp / f"c{c}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    offline = {c: bench_offline(c, c * args.requests_per_client, args.output_len) for c in concurrencies}
    print_table(http, offline)


def print_table(http: dict[int, dict[str, Any]], offline: dict[int, dict[str, Any]]) -> None:
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"command: {' '.join(sys.argv)}\n")
    print("| clients | path | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) | output tok/s |")
    print("|---|---|---|---|---|---|---|")
    for c in http:
        for name, r in (("HTTP", http[c]), ("offline", offline[c])):
            print(f"| {c} | {name} | {r['ttft_p50'] * 1e3:.0f} | {r['ttft_p99'] * 1e3:.0f} | "
                  f"{r['itl_p50'] * 1e3:.1f} | {r['itl_p99'] * 1e3:.1f} | {r['tok_s']:.1f} |")
    print()
    for c in http:
        ratio = http[c]["tok_s"] / offline[c]["tok_s"]
        added = (http[c]["itl_p50"] - offline[c]["itl_p50"]) * 1e3
        print(f"{c} clients: HTTP throughput = {ratio:.0%} of offline; p50 ITL added by the server {added:+.1f} ms")


if __name__ == "__main__":
    main()
