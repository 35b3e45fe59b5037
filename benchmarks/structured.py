"""Structured outputs on the embedded model: what a grammar costs, measured against no grammar in the same run.

    python benchmarks/structured.py [--threads 2] [--quick] [--fidelity]

Tables:
1. decode tok/s, constrained vs unconstrained, same prompts, batch 1 and 32 (target: ≤ 10% slower).
   Both kinds run exactly --tokens output tokens: free text with ignore_eos, constrained text with a
   schema whose string cannot end sooner (minLength far above the budget).
2. compile time of the test corpus' schemas (tests/schema_corpus.py), p50/p99, cold (a new compiler)
   and cached (the same compiler again).
3. TTFT of a constrained request, schema uncached (compile + prefill + first token) vs cached.
4. with --fidelity: random walks through each backend's masks (no model), outputs checked with
   jsonschema, for the keywords engine/schema_support.py routes or refuses.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # tests.schema_corpus

import torch  # noqa: E402
from tests.schema_corpus import SCHEMAS  # noqa: E402

from servewise.config import DeviceConfig, EngineConfig, SchedulerConfig  # noqa: E402
from servewise.engine.llm_engine import LLMEngine  # noqa: E402
from servewise.engine.structured import GrammarCompiler  # noqa: E402
from servewise.loading import embedded_model_path  # noqa: E402
from servewise.types import GrammarKind, GrammarSpec, SamplingParams  # noqa: E402
from throughput import machine  # noqa: E402  (beside this script)

LONG_STRING = {"type": "object", "properties": {"text": {"type": "string", "minLength": 2000, "maxLength": 3000}},
               "required": ["text"], "additionalProperties": False}


def spec(schema: dict) -> GrammarSpec:
    return GrammarSpec(GrammarKind.JSON_SCHEMA, json.dumps(schema, separators=(",", ":")))


def prompts(engine: LLMEngine, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        text = engine.tokenizer.apply_chat_template([{"role": "user", "content": f"Write a story about robot {i}."}])
        out.append(engine.tokenizer.encode(text, add_special_tokens=False))
    return out


def decode_tok_s(engine: LLMEngine, batch: list[list[int]], params: SamplingParams) -> float:
    """Output tok/s once every sequence has its first token (prefill excluded)."""
    for i, p in enumerate(batch):
        engine.add_request(f"d{time.monotonic_ns()}-{i}", p, params)
    while engine.scheduler.num_waiting or any(r.num_output_tokens == 0 for r in engine.scheduler.running):
        engine.step()
    start_tokens = engine.stats.num_generation_tokens
    start = time.perf_counter()
    while engine.has_unfinished_requests:
        engine.step()
    return (engine.stats.num_generation_tokens - start_tokens) / (time.perf_counter() - start)


def decode_table(engine: LLMEngine, tokens: int, batches: list[int]) -> None:
    free = SamplingParams(max_tokens=tokens, temperature=0.8, seed=1, ignore_eos=True)
    constrained = SamplingParams(max_tokens=tokens, temperature=0.8, seed=1, grammar=spec(LONG_STRING))
    engine.grammars.compile(constrained.grammar)  # type: ignore[arg-type]
    print(f"\n## Decode, {tokens} output tokens per sequence (tok/s, higher is better)\n")
    print("| batch | unconstrained | constrained | overhead |\n|---|---|---|---|")
    for b in batches:
        batch = prompts(engine, b)
        decode_tok_s(engine, batch[:1], free)  # warm-up
        runs = [(decode_tok_s(engine, batch, free), decode_tok_s(engine, batch, constrained)) for _ in range(2)]
        f, c = max(r[0] for r in runs), max(r[1] for r in runs)
        print(f"| {b} | {f:.1f} | {c:.1f} | {100 * (f - c) / f:+.1f}% |")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def compile_table(engine: LLMEngine) -> None:
    compiler = GrammarCompiler(engine.tokenizer, engine.vocab_size, engine.eos_token_ids, engine.config.structured)
    specs = [spec(schema) for _, schema in SCHEMAS]
    cold, cached = [], []
    for s in specs:
        start = time.perf_counter()
        compiler.compile(s)
        cold.append(time.perf_counter() - start)
    for s in specs:
        start = time.perf_counter()
        assert compiler.compile(s).cache_hit
        cached.append(time.perf_counter() - start)
    print(f"\n## Compile time, {len(specs)} corpus schemas (ms)\n")
    print("| | p50 | p99 | max |\n|---|---|---|---|")
    for name, values in (("cold", cold), ("cached", cached)):
        print(f"| {name} | {1e3 * percentile(values, 0.5):.3f} | {1e3 * percentile(values, 0.99):.3f} "
              f"| {1e3 * max(values):.3f} |")
    compiler.shutdown()


def ttft(engine: LLMEngine, prompt: list[int], s: GrammarSpec) -> float:
    start = time.perf_counter()
    compiled = engine.grammars.compile(s).compiled  # what the server awaits before it queues the request
    engine.add_request(f"t{time.monotonic_ns()}", prompt, SamplingParams(max_tokens=1, grammar=s), grammar=compiled)
    while engine.has_unfinished_requests:
        engine.step()
    return time.perf_counter() - start


def ttft_table(engine: LLMEngine, repeats: int) -> None:
    prompt = prompts(engine, 1)[0]
    uncached, cached = [], []
    for k in range(repeats):
        desc, schema = SCHEMAS[(5 * k) % len(SCHEMAS)]
        fresh = spec({**schema, "description": f"run {time.monotonic_ns()} {desc}"})  # a key never seen
        uncached.append(ttft(engine, prompt, fresh))
        cached.append(ttft(engine, prompt, fresh))
    print(f"\n## TTFT of a constrained request, median of {repeats} (ms; prompt cached in both)\n")
    print("| schema | TTFT |\n|---|---|")
    print(f"| uncached (compile + first token) | {1e3 * statistics.median(uncached):.1f} |")
    print(f"| cached | {1e3 * statistics.median(cached):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="batch 1 and 8, fewer tokens")
    ap.add_argument("--fidelity", action="store_true", help="also print the backend fidelity table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = LLMEngine(EngineConfig(model=embedded_model_path(), scheduler=SchedulerConfig(max_num_seqs=64),
                                    device=DeviceConfig(num_threads=args.threads)))
    print(f"# Structured outputs — {machine()}\n\ncommand: python {' '.join(sys.argv)}")
    decode_table(engine, 16 if args.quick else args.tokens, [1, 8] if args.quick else [1, 32])
    compile_table(engine)
    ttft_table(engine, 3 if args.quick else 7)
    if args.fidelity:
        from structured_fidelity import fidelity_table  # beside this script

        fidelity_table(engine)


if __name__ == "__main__":
    main()
