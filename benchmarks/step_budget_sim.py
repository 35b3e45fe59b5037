"""The step budget on a simulated clock: fixed vs SLO-derived, same arrivals, same step costs.

    python benchmarks/step_budget_sim.py [--rates 2,4] [--duration-s 120] [--seeds 0,1,2]

Drives the engine's own Scheduler, KVCacheManager and AdmissionController (enforce; the engine's
cost model and the admission's fed with every simulated step, as in the server) with the step
time of the 2-core Xeon measured in issue 12 instead of a model: decode 80 / 182 / 229 / 371
tok/s at 1 / 8 / 32 / 64 sequences, a 512-token prefill ~0.7 s (1.35 ms per prompt token on top
of the decodes), ±5% noise. Workload: the Alpaca seed tasks' prompts (chat template, embedded
tokenizer), 128 output tokens each, Poisson arrivals; SLO TTFT ≤ 2 s and TPOT ≤ 150 ms (the
`slo_sweep.py` class). The wall clock of a busy shared machine says little about a scheduling
rule; this isolates it (slo_sweep.py then checks the real server on a quiet machine).

Rules: baseline = main before issue 12 (B - D prompt tokens per step, and a TPOT guard that
averages the recent steps); fixed = B - D with the new guard (next decode steps by the fitted
cost); slo = the SLO-derived budget with the new guard (the default now).

Not modelled: sampling, detokenization and HTTP time, attention that grows with the context,
that a GEMM-sized mixed step computes its decode rows more cheaply than a decode-only step.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from dataclasses import dataclass, field

import torch

from servewise.bench.datasets import load_dataset
from servewise.config import SchedulerConfig
from servewise.engine.kv_cache_manager import KVCacheManager
from servewise.engine.request import Request
from servewise.engine.scheduler import ScheduleOutput, Scheduler
from servewise.engine.stats import StepRecord
from servewise.errors import OverloadedError
from servewise.loading import embedded_model_path, load_checkpoint
from servewise.slo import AdmissionConfig, AdmissionController, AdmissionMode, SLOClass
from servewise.types import FinishReason, RequestTimings, SamplingParams
from slo_sweep import DATA

TTFT_S, TPOT_S, OUTPUT_TOKENS = 2.0, 0.150, 128
DECODE_TOK_S = [(1, 80.0), (8, 182.0), (32, 229.0), (64, 371.0)]  # issue 12, llama-batched-bench shapes
STEP_OVERHEAD_S, PREFILL_S_PER_TOKEN = 0.008, 0.00135


def decode_s(num_decodes: int) -> float:
    """Seconds of a step's decode rows, interpolated between the measured batch sizes."""
    if num_decodes <= 0:
        return STEP_OVERHEAD_S
    points = [(0, STEP_OVERHEAD_S)] + [(d, d / tok_s) for d, tok_s in DECODE_TOK_S]
    for (d0, t0), (d1, t1) in zip(points, points[1:], strict=False):
        if num_decodes <= d1:
            return t0 + (t1 - t0) * (num_decodes - d0) / (d1 - d0)
    d0, t0 = points[-1]
    return t0 * num_decodes / d0


def step_s(out: ScheduleOutput, rng: random.Random) -> tuple[float, int]:
    """(seconds, prefill tokens) of a scheduled step on the measured CPU."""
    num_prefill = sum(c.num_new_tokens for c in out.chunks if not _is_decode(c.request))
    num_decodes = len(out.chunks) - sum(1 for c in out.chunks if not _is_decode(c.request))
    return (decode_s(num_decodes) + PREFILL_S_PER_TOKEN * num_prefill) * rng.uniform(0.95, 1.05), num_prefill


def _is_decode(r: Request) -> bool:
    return r.num_computed_tokens >= r.num_tokens - 1 and r.num_output_tokens > 0


class AveragingGuard(AdmissionController):
    """The TPOT guard before issue 12, for the baseline: the mean of the recent steps (prefill-heavy
    ones included) plus one decode token against the target."""

    def _tpot_overload(self, slo: SLOClass, num_running: int) -> str | None:
        recent = self.recent_step_s()
        if slo.tpot_s is None or recent is None or num_running == 0:
            return None
        predicted = recent + self.cost_model.cost().decode_s_per_token
        return "recent steps too slow" if predicted > slo.tpot_s * self.config.tpot_margin else None


MODES = {"baseline": ("fixed", AveragingGuard), "fixed": ("fixed", AdmissionController),
         "slo": ("slo", AdmissionController)}


@dataclass
class Outcome:
    sent: int = 0
    shed: int = 0
    ttfts: list[float] = field(default_factory=list)
    tpots: list[float] = field(default_factory=list)
    good: int = 0


def simulate(prompts: list[list[int]], rate: float, duration_s: float, mode: str, seed: int) -> Outcome:
    rng = random.Random(seed)
    budget, controller = MODES[mode]
    config = SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512, step_budget=budget)
    scheduler = Scheduler(config, KVCacheManager(4000, 16, True))
    now = [0.0]
    admission = controller(AdmissionConfig.for_scheduler(config, mode=AdmissionMode.ENFORCE), clock=lambda: now[0])
    slo = SLOClass("interactive", ttft_s=TTFT_S, tpot_s=TPOT_S)
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            break
        arrivals.append((t, rng.choice(prompts)))
    outcome, first_token, live = Outcome(), {}, {}
    params = SamplingParams(max_tokens=OUTPUT_TOKENS, ignore_eos=True)
    while arrivals or live:
        while arrivals and arrivals[0][0] <= now[0]:
            arrival_s, prompt = arrivals.pop(0)
            outcome.sent += 1
            try:
                admission.admit(outcome.sent, len(prompt) - scheduler.kv_cache.num_cached_prefix_tokens(
                    prompt), slo, num_running=scheduler.num_running, num_waiting=scheduler.num_waiting)
            except OverloadedError:
                outcome.shed += 1
                continue
            r = Request(f"r{outcome.sent}", f"r{outcome.sent}", 0, prompt, params, RequestTimings(arrival_s=arrival_s),
                        frozenset(), 4096, torch.Generator(), tpot_s=TPOT_S)
            live[r.request_id] = (r, outcome.sent)
            scheduler.add_request(r)
        if not live:
            now[0] = arrivals[0][0]
            continue
        out = scheduler.schedule()
        seconds, num_prefill = step_s(out, rng)
        now[0] += seconds
        record = StepRecord(seconds, out.num_batched_tokens, num_prefill, len(out.chunks), end_s=now[0])
        scheduler.cost_model.observe(record)
        admission.observe_steps([record])
        for chunk in out.chunks:
            _complete(chunk.request, chunk.num_new_tokens, chunk.samples, scheduler, admission, live, first_token,
                      outcome, now[0])
    return outcome


def _complete(r: Request, num_new: int, samples: bool, scheduler: Scheduler, admission: AdmissionController,
              live: dict, first_token: dict, outcome: Outcome, now: float) -> None:
    r.num_computed_tokens += num_new
    scheduler.kv_cache.cache_full_blocks(r)
    if not samples:
        return
    r.append_token(1)
    key = live[r.request_id][1]
    if r.num_output_tokens == 1:
        first_token[r.request_id] = now
        admission.on_first_token(key, now - r.timings.arrival_s)
    if r.num_output_tokens == OUTPUT_TOKENS:
        scheduler.finish(r, FinishReason.LENGTH)
        admission.on_finished(key)
        del live[r.request_id]
        ttft = first_token[r.request_id] - r.timings.arrival_s
        tpot = (now - first_token.pop(r.request_id)) / (OUTPUT_TOKENS - 1)
        outcome.ttfts.append(ttft)
        outcome.tpots.append(tpot)
        outcome.good += ttft <= TTFT_S and tpot <= TPOT_S


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1)] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="2,4")
    parser.add_argument("--duration-s", type=float, default=120)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    tokenizer = load_checkpoint(embedded_model_path()).tokenizer
    prompts = [tokenizer.encode(tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in e.messages],
                                                              add_generation_prompt=True), add_special_tokens=False)
               for e in load_dataset(DATA)]
    print(f"Command: {' '.join(sys.argv)}; {len(prompts)} Alpaca prompts (median "
          f"{statistics.median(len(p) for p in prompts):.0f} tokens), {OUTPUT_TOKENS} output tokens, "
          f"TTFT ≤ {TTFT_S} s, TPOT ≤ {TPOT_S * 1e3:.0f} ms, admission enforce, simulated 2-core Xeon\n")
    print("| rate (req/s) | rule | sent | shed | TTFT p50 / p99 (s) | TPOT p50 / p99 (ms) | goodput (req/s) "
          "| SLO attainment |")
    print("|---|---|---|---|---|---|---|---|")
    for rate in (float(r) for r in args.rates.split(",")):
        goodput = {}
        for budget in MODES:
            runs = [simulate(prompts, rate, args.duration_s, budget, int(s)) for s in args.seeds.split(",")]
            sent, shed, good = (sum(getattr(o, f) for o in runs) for f in ("sent", "shed", "good"))
            ttfts, tpots = [x for o in runs for x in o.ttfts], [x for o in runs for x in o.tpots]
            goodput[budget] = good / (args.duration_s * len(runs))
            print(f"| {rate:g} | {budget} | {sent} | {100 * shed / max(sent, 1):.0f}% | {pct(ttfts, 50):.2f} / "
                  f"{pct(ttfts, 99):.2f} | {pct(tpots, 50) * 1e3:.0f} / {pct(tpots, 99) * 1e3:.0f} | "
                  f"{goodput[budget]:.2f} | {100 * good / max(sent, 1):.0f}% |")
        for base in ("baseline", "fixed"):
            print(f"| {rate:g} | slo / {base} | | | | | {goodput['slo'] / max(goodput[base], 1e-9):.2f}× | |")


if __name__ == "__main__":
    main()
