"""Offline engine throughput on the embedded model, with llama.cpp and transformers in the same run.

    python benchmarks/throughput.py [--backends auto,fp32] [--skip-peers] [--quick]

Prints one table: prefill tok/s (512-token prompts), steady-state decode tok/s at
1/8/32/64 concurrent sequences (128-token prompts, 128 output tokens, ignore_eos),
TTFT with a cached 1,000-token prefix vs cold, peak RSS; then the peers measured
on the same GGUF with the same threads. Numbers are medians of repeated runs where
cheap; decode is measured after every sequence has its first token.
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

from servewise.config import DeviceConfig, EngineConfig  # noqa: E402
from servewise.engine.llm_engine import LLMEngine  # noqa: E402
from servewise.loading import embedded_model_path  # noqa: E402
from servewise.types import SamplingParams  # noqa: E402

THREADS = 2


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {THREADS} threads, {platform.python_version()}"


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


def bench_engine(backend: str, quick: bool) -> dict[str, Any]:
    config = EngineConfig(device=DeviceConfig(linear_backend=backend, num_threads=THREADS))
    t = time.perf_counter()
    engine = LLMEngine(config)
    load_s = time.perf_counter() - t
    rng = random.Random(0)
    bench_decode(engine, rng, 2, 16, 4)  # warm-up: native kernels compiled, caches touched
    out: dict[str, Any] = {"load_s": load_s, "prefill": bench_prefill(engine, rng)}
    for n in (1, 8, 32, 64):
        out[f"decode@{n}"] = bench_decode(engine, rng, n, output_len=32 if quick else 128)
    out["ttft_cold"], out["ttft_cached"] = bench_prefix_ttft(engine, rng)
    return out


def bench_llama_cpp(path: str, quick: bool) -> dict[str, Any] | str:
    try:
        from llama_cpp import Llama
    except ImportError:
        return "llama-cpp-python not installed (pip install llama-cpp-python): skipped"
    llm = Llama(model_path=path, n_threads=THREADS, n_threads_batch=THREADS, n_ctx=2048, n_batch=512,
                verbose=False)
    rng = random.Random(1)
    rates = []
    for _ in range(3):
        llm.reset()
        prompt = random_prompt(rng, 512)
        t = time.perf_counter()
        llm.eval(prompt)
        rates.append(512 / (time.perf_counter() - t))
    llm.reset()
    llm.eval(random_prompt(rng, 128))
    n = 32 if quick else 128
    t = time.perf_counter()
    for _ in range(n):
        token = llm.sample(temp=0.0)
        llm.eval([token])
    return {"prefill": statistics.median(rates), "decode@1": n / (time.perf_counter() - t)}


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


def print_table(results: dict[str, dict[str, Any]], peers: dict[str, Any]) -> None:
    rows = [("prefill tok/s (512-token prompt)", "prefill"), ("decode tok/s, 1 seq", "decode@1"),
            ("decode tok/s, 8 seqs", "decode@8"), ("decode tok/s, 32 seqs", "decode@32"),
            ("decode tok/s, 64 seqs", "decode@64"), ("decode tok/s, 16 seqs", "decode@16"), ("TTFT cold, 1,016 tokens (s)", "ttft_cold"),
            ("TTFT cached 1,000-token prefix (s)", "ttft_cached"), ("peak RSS (MiB)", "rss_mib"),
            ("model load (s)", "load_s")]
    columns = [f"servewise {b}" for b in results] + [f"{name}" for name, v in peers.items() if isinstance(v, dict)]
    data = list(results.values()) + [v for v in peers.values() if isinstance(v, dict)]
    print(f"\nMachine: {machine()}")
    print(f"Command: {' '.join(sys.argv)}\n")
    print("| metric | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, key in rows:
        print(f"| {label} | " + " | ".join(fmt(d.get(key)) for d in data) + " |")
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
    elif what == "llama.cpp":
        result = bench_llama_cpp(embedded_model_path(), quick)
    else:
        result = bench_transformers(embedded_model_path(), quick)
    if isinstance(result, dict):
        result["rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="auto,fp32")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--quick", action="store_true", help="shorter decode runs (32 tokens)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.quick)
        return
    results = {b: _in_subprocess(f"engine:{b}", args.quick) for b in args.backends.split(",")}
    peers: dict[str, Any] = {}
    if not args.skip_peers:
        peers["llama.cpp (llama-cpp-python)"] = _in_subprocess("llama.cpp", args.quick)
        peers["transformers fp32"] = _in_subprocess("transformers", args.quick)
    print_table({b: r for b, r in results.items() if isinstance(r, dict)}, peers)
    for b, r in results.items():
        if not isinstance(r, dict):
            print(f"\nservewise {b}: {r}")


if __name__ == "__main__":
    main()
