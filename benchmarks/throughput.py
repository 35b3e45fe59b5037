"""Offline engine throughput on the embedded model, with llama.cpp's own tools in the same run.

    python benchmarks/throughput.py [--backends auto,fp32] [--skip-peers] [--transformers] [--quick]
    SERVEWISE_CPU_ISA=avx2 python benchmarks/throughput.py   # the AVX2 kernels on an AVX-512 machine

Prints one table: prefill tok/s (512-token prompts), steady-state decode tok/s at
1/8/32/64 concurrent sequences (128-token prompts, 128 output tokens, ignore_eos),
TTFT with a cached 1,000-token prefix vs cold, peak RSS; then llama.cpp built for this
CPU (llama_cpp_peer.py: llama-bench pp512/tg128, llama-batched-bench 128/128 at
1/8/32/64 sequences, llama-server's peak RSS serving 64 concurrent 128/128 requests,
against ServeWise's on the same load with the same KV capacity), with the ratios and
the targets of issue 12. Numbers are best-of or medians of repeated runs; decode is
measured after every sequence has its first token. Threads are pinned to 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import llama_cpp_peer  # noqa: E402
from servewise.config import CacheConfig, DeviceConfig, EngineConfig  # noqa: E402
from servewise.engine.llm_engine import LLMEngine  # noqa: E402
from servewise.loading import embedded_model_path  # noqa: E402
from servewise.types import SamplingParams  # noqa: E402

THREADS = 2
SEQS = (1, 8, 32, 64)
LOAD_SEQS, LOAD_PROMPT, LOAD_OUTPUT = 64, 128, 128  # the load both servers' peak RSS is measured on
# issue 12's targets, ServeWise / llama.cpp
TARGETS = {"prefill": ">= 4", "decode@1": ">= 1.2", "decode@8": ">= 2", "decode@32": ">= 2.5", "decode@64": ">= 3",
           "load_rss_mib": "<= 1.5"}


def machine() -> str:
    from servewise.layers import native

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    features = native.probe_cpu()
    isa = native.resolve_isa(os.environ.get("SERVEWISE_CPU_ISA", "auto"))
    return (f"{cpu}, {os.cpu_count()} cores ({features.describe() if features else 'not probed'}); ServeWise "
            f"kernels {isa}; torch {torch.__version__}, {THREADS} threads, Python {platform.python_version()}")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(200, 40000) for _ in range(n)]


def run_until_done(engine: LLMEngine, on_step: Callable[[], None] | None = None) -> None:
    while engine.has_unfinished_requests:
        engine.step()
        if on_step:
            on_step()


def bench_prefill(engine: LLMEngine, rng: random.Random, prompt_len: int = 512, repeats: int = 3) -> float:
    rates = []
    for i in range(repeats):
        engine.add_request(f"prefill-{i}-{rng.random()}", random_prompt(rng, prompt_len),
                           SamplingParams(max_tokens=1, temperature=0))
        t = time.perf_counter()
        run_until_done(engine)
        rates.append(prompt_len / (time.perf_counter() - t))
    return statistics.median(rates)


def bench_decode(engine: LLMEngine, rng: random.Random, num_seqs: int, prompt_len: int = 128,
                 output_len: int = 128) -> float:
    params = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0)
    for i in range(num_seqs):
        engine.add_request(f"decode-{num_seqs}-{i}-{rng.random()}", random_prompt(rng, prompt_len), params)
    # Prefill everything first, then time the steady state: every step decodes every sequence.
    while engine.scheduler.num_waiting or any(r.num_output_tokens == 0 for r in engine.scheduler.running):
        engine.step()
    generated_before = engine.stats.num_generation_tokens
    t = time.perf_counter()
    run_until_done(engine)
    elapsed = time.perf_counter() - t
    return (engine.stats.num_generation_tokens - generated_before) / elapsed


def bench_prefix_ttft(engine: LLMEngine, rng: random.Random, prefix_len: int = 1000) -> tuple[float, float]:
    def ttft(prompt: list[int]) -> float:
        rid = f"ttft-{rng.random()}"
        engine.add_request(rid, prompt, SamplingParams(max_tokens=1, temperature=0))
        t = time.perf_counter()
        run_until_done(engine)
        return time.perf_counter() - t

    colds, warms = [], []
    for _ in range(3):
        prefix = random_prompt(rng, prefix_len)
        colds.append(ttft(prefix + random_prompt(rng, 16)))  # cold: fills the cache with the prefix
        warms.append(ttft(prefix + random_prompt(rng, 16)))  # same prefix, new question
    return statistics.median(colds), statistics.median(warms)


def engine_config(backend: str, kv_tokens: int | None = None) -> EngineConfig:
    cache = CacheConfig() if kv_tokens is None else CacheConfig(num_blocks=-(-kv_tokens // CacheConfig().block_size))
    return EngineConfig(cache=cache, device=DeviceConfig(linear_backend=backend, num_threads=THREADS,
                                                         cpu_isa=os.environ.get("SERVEWISE_CPU_ISA", "auto")))


def bench_engine(backend: str, quick: bool) -> dict[str, Any]:
    t = time.perf_counter()
    engine = LLMEngine(engine_config(backend))
    load_s = time.perf_counter() - t
    rng = random.Random(0)
    bench_decode(engine, rng, 2, 16, 4)  # warm-up: native kernels compiled, caches touched
    out: dict[str, Any] = {"load_s": load_s, "prefill": max(bench_prefill(engine, rng) for _ in range(2))}
    for n in SEQS:
        out[f"decode@{n}"] = max(bench_decode(engine, rng, n, output_len=32 if quick else 128)
                                 for _ in range(1 if quick or n > 8 else 2))
    out["ttft_cold"], out["ttft_cached"] = bench_prefix_ttft(engine, rng)
    return out


def load_prompts() -> list[list[int]]:
    return [random_prompt(random.Random(i), LOAD_PROMPT) for i in range(LOAD_SEQS)]


def bench_server_load_rss(backend: str) -> dict[str, Any]:
    """Peak RSS of `servewise serve` serving the same load as llama-server, with the same KV capacity."""
    port = llama_cpp_peer.free_port()
    kv_blocks = -(-LOAD_SEQS * (LOAD_PROMPT + LOAD_OUTPUT + 16) // CacheConfig().block_size)
    cmd = [sys.executable, "-m", "servewise.cli", "serve", "--port", str(port), "--host", "127.0.0.1",
           "--linear-backend", backend, "--threads", str(THREADS), "--num-kv-blocks", str(kv_blocks),
           "--max-num-seqs", str(LOAD_SEQS), "--admission", "off"]
    body = {"model": "SmolLM2-135M-Instruct.Q4_1", "max_tokens": LOAD_OUTPUT, "ignore_eos": True, "temperature": 0}
    return llama_cpp_peer.serving_peak_rss(cmd, dict(os.environ), port, "/ready", "/v1/completions",
                                           [{**body, "prompt": p} for p in load_prompts()])


def bench_llama_cpp(path: str) -> dict[str, Any] | str:
    """llama.cpp's own tools on the same GGUF and threads (built once for this CPU; see llama_cpp_peer.py)."""
    bin_dir = llama_cpp_peer.build()
    if isinstance(bin_dir, str):
        return bin_dir
    result: dict[str, Any] = {}
    bench = llama_cpp_peer.llama_bench(bin_dir, path, THREADS)
    batched = llama_cpp_peer.batched_bench(bin_dir, path, THREADS, SEQS)
    server = llama_cpp_peer.server_rss(bin_dir, path, THREADS, load_prompts(), LOAD_OUTPUT)
    result.update({f"decode@{n}": batched.get(f"decode@{n}") for n in SEQS})
    result["decode@1"] = bench["decode@1"]  # tg128 is the 1-sequence reference; batched-bench's is noted
    result.update(prefill=bench["prefill"], batched1=result["decode@1"], load_rss_mib=server.get("rss_mib"),
                  batched_rss_mib=batched["rss_mib"],
                  commands=[bench["command"], batched["command"], server.get("command", server.get("error"))])
    return result


def bench_transformers(path: str, quick: bool) -> dict[str, Any] | str:
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        return "transformers not installed: skipped"
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 torch_dtype=torch.float32).eval()
    rng = random.Random(2)
    out: dict[str, Any] = {}
    for batch in (1, 16):
        ids = torch.tensor([random_prompt(rng, 128) for _ in range(batch)])
        new = 8 if quick else 32
        with torch.inference_mode():
            t = time.perf_counter()
            model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        out[f"decode@{batch}"] = batch * new / (time.perf_counter() - t)
    return out


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.1f}{unit}" if isinstance(value, float) else str(value)


ROWS = [("prefill tok/s (512-token prompt; llama.cpp pp512)", "prefill"),
        ("decode tok/s, 1 seq (llama.cpp tg128)", "decode@1"), ("decode tok/s, 8 seqs", "decode@8"),
        ("decode tok/s, 32 seqs", "decode@32"), ("decode tok/s, 64 seqs", "decode@64"),
        ("peak RSS serving 64 x 128/128 at once, same KV capacity (MiB)", "load_rss_mib"),
        ("peak RSS, whole offline benchmark run (MiB)", "rss_mib"), ("TTFT cold, 1,016 tokens (s)", "ttft_cold"),
        ("TTFT cached 1,000-token prefix (s)", "ttft_cached"), ("model load (s)", "load_s")]


def _ratio(ours: Any, theirs: Any) -> str:
    return f"{ours / theirs:.2f}x" if isinstance(ours, float) and isinstance(theirs, float) and theirs else "—"


def print_table(results: dict[str, dict[str, Any]], peers: dict[str, Any]) -> None:
    llama = peers.get("llama.cpp")
    llama = llama if isinstance(llama, dict) else {}
    first = next(iter(results), None)
    columns = [f"servewise {b}" for b in results] + [n for n, v in peers.items() if isinstance(v, dict)]
    data = list(results.values()) + [v for v in peers.values() if isinstance(v, dict)]
    if llama and first:
        columns += [f"{first} / llama.cpp", "target"]
    print(f"\nMachine: {machine()}")
    print(f"Command: {' '.join(sys.argv)}\n")
    print("| metric | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, key in ROWS:
        cells = [fmt(d.get(key)) for d in data]
        if llama and first:
            target = TARGETS.get(key)
            cells += [_ratio(results[first].get(key), llama.get(key)) if target else "—", f"{target}x" if target else ""]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if llama:
        print(f"\nllama.cpp: llama-batched-bench decodes 1 seq at {fmt(llama.get('batched1'))} tok/s and peaks at "
              f"{fmt(llama.get('batched_rss_mib'))} MiB RSS; its peak-RSS row is llama-server's on the same load")
        for command in llama.get("commands", []):
            print(f"  {command}")
    for name, v in peers.items():
        if isinstance(v, str):
            print(f"\n{name}: {v}")
    for b, r in results.items():
        print(f"\nservewise {b}: TTFT cached / cold = {r['ttft_cached'] / r['ttft_cold']:.2f}")


def _in_subprocess(what: str, quick: bool) -> Any:
    """Each system runs in its own process: clean peak RSS, no leftover threads or caches."""
    cmd = [sys.executable, __file__, "--child", what] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"failed: {proc.stderr.strip()[-500:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(what: str, quick: bool) -> None:
    torch.set_num_threads(THREADS)
    if what.startswith("engine:"):
        result: Any = bench_engine(what.split(":", 1)[1], quick)
        result["rss_mib"] = peak_rss_mib()
    elif what.startswith("load-rss:"):
        result = bench_server_load_rss(what.split(":", 1)[1])
    elif what == "llama.cpp":
        result = bench_llama_cpp(embedded_model_path())
    else:
        result = bench_transformers(embedded_model_path(), quick)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="auto,fp32")
    parser.add_argument("--skip-peers", action="store_true", help="ServeWise only")
    parser.add_argument("--transformers", action="store_true", help="also transformers fp32 generate (slow)")
    parser.add_argument("--quick", action="store_true", help="shorter decode runs (32 tokens)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.quick)
        return
    results = {b: _in_subprocess(f"engine:{b}", args.quick) for b in args.backends.split(",")}
    for b, r in results.items():
        if isinstance(r, dict):
            load = _in_subprocess(f"load-rss:{b}", args.quick)
            r["load_rss_mib"] = load.get("rss_mib") if isinstance(load, dict) else None
    peers: dict[str, Any] = {}
    if not args.skip_peers:
        peers["llama.cpp"] = _in_subprocess("llama.cpp", args.quick)
        if args.transformers:
            peers["transformers fp32"] = _in_subprocess("transformers", args.quick)
    print_table({b: r for b, r in results.items() if isinstance(r, dict)}, peers)
    for b, r in results.items():
        if not isinstance(r, dict):
            print(f"\nservewise {b}: {r}")


if __name__ == "__main__":
    main()
