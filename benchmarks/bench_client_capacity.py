"""How many streamed requests per second one `servewise bench` process sustains.

The bench must not be the bottleneck of what it measures. This drives the fake
OpenAI server (``python -m servewise.bench.fake_server``, its own process, no
delays) with the bench's own runner at a fixed concurrency, and with a minimal
httpx streaming client as the baseline, in the same run. Each request streams
``--tokens`` chunks.

    PYTHONPATH=src python benchmarks/bench_client_capacity.py [--requests 4000] [--concurrencies 16,64,256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx

from servewise.bench import BenchConfig, LoadConfig, TargetConfig, run_benchmark_async, sweep
from servewise.bench.client import build_body
from servewise.bench.distributions import parse_length
from servewise.bench.workloads import WorkloadConfig


def machine() -> str:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def start_fake_server(num_tokens: int) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen([sys.executable, "-m", "servewise.bench.fake_server", "--port", "0",
                               "--tokens", str(num_tokens)], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()  # "fake OpenAI server on http://127.0.0.1:PORT/v1 (...)"
    return server, line.split(" on ", 1)[1].split()[0]


async def run_servewise_bench(base_url: str, num_requests: int, concurrency: int, warmup: int) -> tuple[float, float]:
    config = BenchConfig(
        TargetConfig(base_url),
        LoadConfig(sweep(concurrencies=[concurrency]), num_requests=num_requests, warmup_requests=warmup),
        WorkloadConfig(input_len=parse_length("32"), output_len=parse_length("16")),
        tokenizer="approx")
    point = (await run_benchmark_async(config)).points[0]
    num_chunks = sum(len(r.token_times_s) for r in point.records if not r.warmup)
    return point.summary.request_throughput_per_s, num_chunks / point.summary.duration_s


async def run_httpx(base_url: str, num_requests: int, concurrency: int, warmup: int) -> tuple[float, float]:
    """The baseline: a plain httpx streaming loop that parses each event and counts content chunks."""
    body = build_body((("user", "hello " * 32),), 16, "fake-model", TargetConfig(base_url))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    num_chunks = 0
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one() -> None:
            nonlocal num_chunks
            async with client.stream("POST", base_url + "/chat/completions", content=body,
                                     headers={"Content-Type": "application/json"}) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data: {"):
                        choices = json.loads(line[6:]).get("choices") or [{}]
                        num_chunks += bool(choices[0].get("delta", {}).get("content"))

        async def worker(count: int) -> None:
            for _ in range(count):
                await one()

        await asyncio.gather(*(worker(warmup // concurrency + 1) for _ in range(concurrency)))
        num_chunks = 0
        start_s = time.perf_counter()
        await asyncio.gather(*(worker(num_requests // concurrency) for _ in range(concurrency)))
        elapsed_s = time.perf_counter() - start_s
    done = num_requests // concurrency * concurrency
    return done / elapsed_s, num_chunks / elapsed_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="measured requests per servewise row")
    parser.add_argument("--baseline-requests", type=int, default=1000, help="measured requests of the httpx row")
    parser.add_argument("--concurrencies", default="16,64,256", help="one servewise row each")
    parser.add_argument("--tokens", type=int, default=16, help="content chunks streamed per request")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrencies.split(",")]
    baseline_concurrency = 64 if 64 in concurrencies else concurrencies[0]
    server, base_url = start_fake_server(args.tokens)
    rows = []
    try:
        for concurrency in concurrencies:
            warmup = max(concurrency, args.requests // 20)
            rows.append(("servewise bench (aiohttp)", concurrency, args.requests,
                         asyncio.run(run_servewise_bench(base_url, args.requests, concurrency, warmup))))
        rows.append(("baseline: plain httpx loop", baseline_concurrency, args.baseline_requests,
                     asyncio.run(run_httpx(base_url, args.baseline_requests, baseline_concurrency,
                                           baseline_concurrency))))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"load: closed loop, {args.tokens} content chunks a request, fake server (no delays) in its own process\n")
    print(f"| {'client':<28} | {'concurrency':>11} | {'requests':>8} | {'req/s':>7} | {'chunks/s':>8} |")
    print(f"|{'-' * 30}|{'-' * 13}|{'-' * 10}|{'-' * 9}|{'-' * 10}|")
    for name, concurrency, num_requests, (requests_per_s, chunks_per_s) in rows:
        print(f"| {name:<28} | {concurrency:>11} | {num_requests:>8} | {requests_per_s:>7.0f} | {chunks_per_s:>8.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
