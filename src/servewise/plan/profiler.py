"""``servewise profile``: measure the engine's step costs on this machine and fit ``step_cost.py``.

Three measurements, one real model:

1. Controlled shapes: prefill chunks of many sizes and contexts, decode batches of many
   sizes and contexts, and mixed steps (decodes plus a chunk), each built as requests
   with KV blocks from the engine's own KV-cache manager and run through the engine's
   own model runner and sampler (what ``LLMEngine`` times as a step), ``repeats`` times
   (the median is kept: a one-off stall of the machine does not move it).
2. The engine loop: requests of varied lengths arriving while others decode, served by
   ``LLMEngine.step`` exactly as the server's loop does; its steps are more samples for the
   fit, and the gaps between one forward and the next are the host overhead.
3. Ingress: applying the chat template and tokenizing prompts of a few lengths.

The K/V read by controlled shapes are whatever the pool holds (timing does not depend on
their values). About a minute on the embedded model with the default grid.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import torch

from servewise.bench.corpus import BUILTIN_CORPUS
from servewise.config import EngineConfig
from servewise.engine.llm_engine import LLMEngine
from servewise.engine.model_runner import MAX_ALL_PAGED_STEP_TOKENS
from servewise.engine.request import Request
from servewise.engine.scheduler import ScheduledChunk, ScheduleOutput
from servewise.layers.cpu_backend import QUANT_GEMM_ROW_REGIMES
from servewise.plan.fit import StepSample, fit_forward, fit_line, model_from_coefficients
from servewise.plan.machine import model_fingerprint, this_machine
from servewise.plan.profile import BackendInfo, ModelIdentity, Profile, ProfiledRange
from servewise.plan.step_cost import shape_of
from servewise.types import RequestTimings, SamplingParams

Progress = Callable[[str], None]
# (context tokens, new tokens, samples) of each request in a controlled step
StepSpec = tuple[tuple[int, int, bool], ...]


@dataclass(frozen=True)
class ProfileGrid:
    """The step shapes measured (each list must be non-empty)."""

    prefill_tokens: tuple[int, ...]  # prompts computed in one chunk from context 0 (they sample)
    chunk_tokens: tuple[int, ...]  # chunks after a context (chunked prefill, prefix hits; no sample)
    chunk_contexts: tuple[int, ...]
    decode_batches: tuple[int, ...]  # sequences decoding one token each
    decode_contexts: tuple[int, ...]
    num_mixed: int  # random steps of decodes plus one chunk
    repeats: int  # measurements of each controlled shape (their median is the sample)
    num_loop_requests: int  # requests served through the engine loop (host overhead)

    def __post_init__(self) -> None:
        for name in ("prefill_tokens", "chunk_tokens", "chunk_contexts", "decode_batches", "decode_contexts"):
            values = getattr(self, name)
            if not values or any(v < (0 if name == "chunk_contexts" else 1) for v in values):
                raise ValueError(f"profile grid: {name} must be a non-empty list of positive sizes, got {values}")
        if self.num_mixed < 0 or self.repeats < 1 or self.num_loop_requests < 2:
            raise ValueError("profile grid: num_mixed ≥ 0, repeats ≥ 1 and num_loop_requests ≥ 2 required")

    @classmethod
    def default(cls, max_tokens: int, max_seqs: int, max_context: int, *, quick: bool = False) -> ProfileGrid:
        """Sizes that straddle every kernel boundary, up to the engine's limits."""
        edges = sorted({b for edge in (MAX_ALL_PAGED_STEP_TOKENS, *QUANT_GEMM_ROW_REGIMES)
                        for b in (edge, edge + 1)})
        if quick:
            prefill = tuple(s for s in (1, 4, 16, 17, 64, 65, 256, 512) if s <= max_tokens)
            return cls(prefill, prefill[-2:], _upto((256,), max_context), tuple(b for b in (1, 4, 16, 17, 48)
                                                                                if b <= max_seqs),
                       _upto((32, 256), max_context), 6, 1, 8)
        all_sizes = sorted({1, 2, 4, 8, 12, 24, 32, 48, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, *edges})
        all_batches = sorted({1, 2, 3, 4, 6, 8, 12, 24, 32, 48, 64, 96, 128, 256, *edges})
        return cls(tuple(s for s in all_sizes if s <= max_tokens), _upto((16, 64, 256, max_tokens), max_tokens),
                   _upto((128, 512, 1024, 2048), max_context), tuple(b for b in all_batches if b <= max_seqs),
                   _upto((16, 128, 512, 1024, 2048), max_context), 24, 3, 32)


def _upto(values: tuple[int, ...], limit: int) -> tuple[int, ...]:
    kept = tuple(sorted({v for v in values if v <= limit}))
    return kept or (limit,)


def row_boundaries(config: EngineConfig) -> tuple[int, ...]:
    """Row counts where this backend's kernels change (the regimes of ``RowCost``)."""
    edges = {MAX_ALL_PAGED_STEP_TOKENS}
    if config.device.device == "cpu" and config.device.linear_backend != "fp32":
        edges.update(QUANT_GEMM_ROW_REGIMES)
    return tuple(sorted(edges))


class _Shapes:
    """Builds controlled steps out of requests holding KV blocks of the engine's own pool."""

    def __init__(self, engine: LLMEngine, rng: random.Random) -> None:
        self.engine = engine
        self.rng = rng
        self.capacity_tokens = engine.kv_cache.num_blocks * engine.kv_cache.block_size
        self._ids = 0

    def fits(self, spec: StepSpec) -> bool:
        need = sum(self.engine.kv_cache.num_blocks_for(s + n + 1) for s, n, _ in spec)
        return need <= self.engine.kv_cache.num_blocks and all(
            s + n + 1 <= self.engine.max_model_len for s, n, _ in spec)

    def build(self, spec: StepSpec) -> list[ScheduledChunk]:
        chunks = []
        vocab = self.engine.vocab_size
        for context, new, samples in spec:
            length = context + new + (0 if samples else 1)
            self._ids += 1
            request = Request(request_id=f"profile-{self._ids}", group_id=f"profile-{self._ids}", index=0,
                              prompt_token_ids=[self.rng.randrange(vocab) for _ in range(length)],
                              params=SamplingParams(max_tokens=1), timings=RequestTimings(arrival_s=0.0),
                              eos_token_ids=frozenset(), max_total_tokens=self.engine.max_model_len,
                              generator=torch.Generator().manual_seed(self._ids))
            self.engine.kv_cache.allocate(request, context + new)
            request.num_computed_tokens = context
            chunks.append(ScheduledChunk(request, new))
        return chunks

    def release(self, chunks: list[ScheduledChunk]) -> None:
        for chunk in chunks:
            self.engine.kv_cache.free(chunk.request)


def _time_forward(engine: LLMEngine, chunks: list[ScheduledChunk]) -> float:
    """What LLMEngine times as a step: the runner's forward and the sampler."""
    start = time.perf_counter()
    out = engine.runner.execute(ScheduleOutput(chunks=chunks))
    if out.sample_requests:
        engine.sampler.sample(out.logits, out.sample_requests)
    return time.perf_counter() - start


def controlled_specs(grid: ProfileGrid, max_tokens: int, rng: random.Random) -> Iterator[StepSpec]:
    for n in grid.prefill_tokens:
        yield ((0, n, True),)
    for context in grid.chunk_contexts:
        for n in grid.chunk_tokens:
            yield ((context, n, False),)
    for context in grid.decode_contexts:
        for batch in grid.decode_batches:
            yield tuple((context + i % 7, 1, True) for i in range(batch))
    for _ in range(grid.num_mixed):
        batch = rng.choice([b for b in grid.decode_batches if b < max_tokens] or [1])
        chunk = rng.randint(2, max(2, max_tokens - batch))
        context = rng.choice(grid.decode_contexts)
        yield (*((context + i % 5, 1, True) for i in range(batch)),
               (rng.choice((0, *grid.chunk_contexts)), chunk, rng.random() < 0.5))


def measure_controlled(engine: LLMEngine, grid: ProfileGrid, rng: random.Random,
                       progress: Progress) -> list[StepSample]:
    shapes = _Shapes(engine, rng)
    max_tokens = max(grid.prefill_tokens)
    specs = [s for s in controlled_specs(grid, max_tokens, rng) if shapes.fits(s)]
    warm = shapes.build(specs[0])
    _time_forward(engine, warm)  # first call pays one-off allocations
    shapes.release(warm)
    samples = []
    for i, spec in enumerate(specs):
        if i % 25 == 0:
            progress(f"controlled steps {i}/{len(specs)}")
        times = []
        for _ in range(grid.repeats):
            chunks = shapes.build(spec)
            shape = shape_of(chunks)
            times.append(_time_forward(engine, chunks))
            shapes.release(chunks)
        samples.append(StepSample(shape, statistics.median(times)))  # one slow outlier does not move it
    return samples


def measure_loop(engine: LLMEngine, grid: ProfileGrid, rng: random.Random
                 ) -> tuple[list[StepSample], list[tuple[int, float]]]:
    """Serve requests through LLMEngine.step as the server's loop does; returns the steps and
    (sequences in the step, host seconds until the next forward starts)."""
    shapes = []
    schedule = engine.scheduler.schedule

    def observed() -> ScheduleOutput:  # record each step's shape before it runs
        out = schedule()
        shapes.append(shape_of(out.chunks))
        return out

    engine.scheduler.schedule = observed  # type: ignore[method-assign]
    max_prompt = max(8, min(1024, engine.max_model_len // 2))
    pending = [(rng.randint(8, max_prompt) if rng.random() < 0.3 else rng.randint(8, 128), rng.randint(8, 96))
               for _ in range(grid.num_loop_requests)]
    samples: list[StepSample] = []
    gaps: list[tuple[int, float]] = []
    last: tuple[int, float] | None = None  # (sequences, forward end) of the previous step
    try:
        while pending or engine.has_unfinished_requests:
            added = bool(pending) and (not engine.has_unfinished_requests or rng.random() < 0.35)
            if added:
                prompt, output = pending.pop()
                engine.add_request(f"loop-{len(pending)}", [rng.randrange(engine.vocab_size) for _ in range(prompt)],
                                   SamplingParams(max_tokens=output, ignore_eos=True))
            num_steps = engine.stats.num_steps
            engine.step()
            engine.snapshot_stats()
            if engine.stats.num_steps == num_steps:
                last = None
                continue
            record = engine.stats.recent_steps[-1]
            shape = shapes[-1]
            samples.append(StepSample(shape, record.duration_s))
            start = record.end_s - record.duration_s
            if last is not None and not added:
                gaps.append((last[0], start - last[1]))
            last = (shape.num_seqs, record.end_s)
    finally:
        del engine.scheduler.schedule
    return samples, gaps


def measure_ingress(engine: LLMEngine) -> tuple[float, float]:
    """(seconds, seconds per prompt token) to apply the chat template and tokenize a prompt."""
    tokenizer = engine.tokenizer
    words = BUILTIN_CORPUS.split()
    xs, ys = [], []
    for num_words in (16, 128, 512, 1024):
        text = " ".join(words[i % len(words)] for i in range(num_words))
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
            ids = tokenizer.encode(rendered, add_special_tokens=False)
            best = min(best, time.perf_counter() - start)
        xs.append(float(len(ids)))
        ys.append(best)
    return fit_line(xs, ys)


def run_profile(engine: LLMEngine, config: EngineConfig, grid: ProfileGrid, *, seed: int = 0,
                progress: Progress | None = None) -> Profile:
    """Measure, fit and describe; ``engine`` must be idle (its KV pool is borrowed)."""
    say = progress or (lambda _: None)
    rng = random.Random(seed)
    started = time.perf_counter()
    say("measuring controlled step shapes")
    samples = measure_controlled(engine, grid, rng, say)
    say("serving requests through the engine loop")
    loop_samples, gaps = measure_loop(engine, grid, rng)
    samples += loop_samples
    say("measuring ingress (chat template + tokenizer)")
    ingress = measure_ingress(engine)
    boundaries = row_boundaries(config)
    coef, error = fit_forward(samples, boundaries)
    host = fit_line([float(n) for n, _ in gaps], [g for _, g in gaps])
    host_pred = [(host[0] + host[1] * n, g) for n, g in gaps]
    host_mape = sum(abs(p - g) / g for p, g in host_pred if g > 0) / max(1, len(host_pred))
    info = engine.model_info
    checkpoint_path = info.path
    arch = dataclasses.asdict(engine.runner.model.config)
    return Profile(
        machine=this_machine(),
        model=ModelIdentity(info.name, checkpoint_path, model_fingerprint(checkpoint_path), arch),
        backend=BackendInfo(config.device.device, config.device.linear_backend,
                            config.device.num_threads or torch.get_num_threads(), config.cache.kv_cache_dtype),
        cost=model_from_coefficients(coef, boundaries, host=host, ingress=ingress), fit=error, host_mape=host_mape,
        ranges=ProfiledRange.of([s.shape for s in samples]),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        duration_s=time.perf_counter() - started, samples=tuple(samples))
