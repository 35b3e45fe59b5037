"""n-gram speculative decoding on the embedded model: decode speed with it on vs off, in one process.

    python benchmarks/speculative.py [--k 4] [--num-prompts 16] [--max-tokens 128] [--batch-sizes 1,8]

Two workloads, chat template, greedy:
- copy: "rewrite / summarise this text" over the longer outputs of the Alpaca seed tasks, so
  the answer reuses the prompt's words (what prompt lookup is for);
- alpaca: the Alpaca seed tasks themselves (`../shared/data/alpaca_seed_tasks.jsonl`), free answers.

One engine serves both sides: its speculator is swapped between requests (on, off, off, on, ...),
so both see the same weights, caches and machine load. Decode tok/s = output tokens after the
first / time of the steps that made them (the steps after every prompt of a group had its first
token), summed over a row's prompts. At batch > 1 the prompts run in groups of that size (drafting
turns itself off with the batch). On a busy shared machine use --threads 1 --clock thread: the
engine thread's CPU time is what a quiet machine would take, whatever else runs.
Also printed: the draft acceptance rate, the tokens each verify step emitted, and whether the
greedy outputs were identical.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from bench_client_capacity import machine  # noqa: E402
from servewise.bench.datasets import load_dataset, read_records  # noqa: E402
from servewise.config import DeviceConfig, EngineConfig, SpeculativeConfig  # noqa: E402
from servewise.engine.llm_engine import LLMEngine  # noqa: E402
from servewise.engine.speculative import NgramSpeculator, NoSpeculation  # noqa: E402
from servewise.types import SamplingParams  # noqa: E402
from slo_sweep import DATA  # noqa: E402
from throughput import THREADS  # noqa: E402

COPY_INSTRUCTIONS = ("Rewrite the following text, keeping every fact:", "Summarize the following text:",
                     "Proofread the following text and give the corrected version:")


@dataclass
class Side:
    decode_tokens: int = 0
    decode_s: float = 0.0
    outputs: list[list[int]] | None = None

    @property
    def tok_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s else float("nan")


def copy_prompts(n: int) -> list[str]:
    texts = [inst["output"] for record in read_records(DATA) for inst in record.get("instances", [])
             if isinstance(inst.get("output"), str) and len(inst["output"]) >= 300]
    return [f"{COPY_INSTRUCTIONS[i % len(COPY_INSTRUCTIONS)]}\n\n{texts[i % len(texts)]}" for i in range(n)]


def alpaca_prompts(n: int) -> list[str]:
    return [entry.messages[0][1] for entry in load_dataset(DATA)[:n]]


def encode_chat(engine: LLMEngine, text: str) -> list[int]:
    rendered = engine.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return engine.tokenizer.encode(rendered, add_special_tokens=False)


def run_group(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams, side: Side,
              clock: Callable[[], float] = time.perf_counter) -> None:
    """Run the prompts together; count the steps after every one of them has its first token."""
    ids = [f"r{i}-{time.monotonic_ns()}" for i in range(len(prompts))]
    for rid, tokens in zip(ids, prompts, strict=True):
        engine.add_request(rid, tokens, params)
    tokens_out: dict[str, list[int]] = {rid: [] for rid in ids}
    while engine.has_unfinished_requests:
        decoding = all(tokens_out[rid] for rid in ids)
        start = clock()
        outputs = engine.step()
        elapsed = clock() - start
        for out in outputs:
            tokens_out[out.request_id].extend(out.outputs[0].token_ids)
            if decoding:
                side.decode_tokens += len(out.outputs[0].token_ids)
        if decoding:
            side.decode_s += elapsed
    assert side.outputs is not None
    side.outputs.extend(tokens_out[rid] for rid in ids)


def bench_workload(engine: LLMEngine, spec: NgramSpeculator, prompts: list[list[int]], batch: int,
                   max_tokens: int, clock: Callable[[], float]) -> dict[str, Any]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    on, off = Side(outputs=[]), Side(outputs=[])
    drafts_before = (engine.stats.num_drafts, engine.stats.num_draft_tokens, engine.stats.num_accepted_tokens)
    groups = [prompts[i:i + batch] for i in range(0, len(prompts), batch)]
    for g, group in enumerate(groups):
        order = [(on, spec), (off, NoSpeculation())] if g % 2 == 0 else [(off, NoSpeculation()), (on, spec)]
        for side, speculator in order:
            engine.speculator = speculator
            run_group(engine, group, params, side, clock)
    num_drafts, num_draft, num_accepted = (after - before for after, before in zip(
        (engine.stats.num_drafts, engine.stats.num_draft_tokens, engine.stats.num_accepted_tokens), drafts_before,
        strict=True))
    same = sum(a == b for a, b in zip(on.outputs or [], off.outputs or [], strict=True))
    return {"on": on.tok_s, "off": off.tok_s, "speedup": on.tok_s / off.tok_s,
            "acceptance": num_accepted / num_draft if num_draft else None,
            "tokens_per_verify": (num_accepted + num_drafts) / num_drafts if num_drafts else None,
            "identical": f"{same}/{len(prompts)}", "decode_tokens": on.decode_tokens}


def fmt(x: Any, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=4, help="draft tokens per step")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--workloads", default="copy,alpaca")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--clock", default="wall", choices=["wall", "thread"],
                        help="thread: CPU time of the engine thread (with --threads 1, what a quiet machine would "
                             "take; for a busy shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    spec_config = SpeculativeConfig(num_speculative_tokens=args.k)
    engine = LLMEngine(EngineConfig(device=DeviceConfig(linear_backend=args.backend, num_threads=args.threads),
                                    speculative=spec_config))
    texts = {"copy": copy_prompts, "alpaca": alpaca_prompts}
    warm = encode_chat(engine, "Say hello.")
    run_group(engine, [warm], SamplingParams(max_tokens=8, temperature=0), Side(outputs=[]))
    rows = []
    for workload in args.workloads.split(","):
        prompts = [encode_chat(engine, t) for t in texts[workload](args.num_prompts)]
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            result = bench_workload(engine, NgramSpeculator(spec_config, engine.scheduler.cost_model), prompts,
                                    batch, args.max_tokens, clock)
            rows.append((workload, batch, result))
    print(f"\nMachine: {machine()}")
    print(f"Command: {' '.join(sys.argv)}  (k={args.k}, backend {args.backend}, {args.threads} threads, "
          f"{args.clock} clock, greedy, max_tokens {args.max_tokens}, {args.num_prompts} prompts)\n")
    cost = engine.scheduler.cost_model.cost()
    print(f"Fitted step cost at the end: a = {cost.step_overhead_s * 1e3:.1f} ms, c = "
          f"{cost.decode_s_per_token * 1e3:.2f} ms per decode or draft token\n")
    print("| workload | batch | decode tok/s off | decode tok/s on | on / off | draft acceptance | "
          "tokens per verify step | identical outputs |")
    print("|---|---|---|---|---|---|---|---|")
    for workload, batch, r in rows:
        print(f"| {workload} | {batch} | {r['off']:.1f} | {r['on']:.1f} | {r['speedup']:.2f}× | "
              f"{fmt(r['acceptance'])} | {fmt(r['tokens_per_verify'])} | {r['identical']} |")


if __name__ == "__main__":
    main()
