"""The synchronous engine: add requests, call ``step()``, get RequestOutputs.

Not thread-safe: one thread owns it (AsyncEngine's loop, or the offline LLM).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from servewise.config import ConfigError, DeviceConfig, EngineConfig, ModelArchConfig
from servewise.engine.detokenizer import StopAwareDetokenizer
from servewise.engine.faults import FailureDraw, SlowRunner
from servewise.engine.kv_cache_manager import KVCacheManager
from servewise.engine.model_runner import ModelRunner, RunnerOutput, num_blocks_for_budget
from servewise.engine.output_processor import RequestGroup, build_output, check_stop
from servewise.engine.request import Request
from servewise.engine.sampler import Sampler
from servewise.engine.scheduler import ScheduledChunk, ScheduleOutput, Scheduler
from servewise.engine.speculative import Emitted, create_speculator, sample_with_drafts
from servewise.engine.stats import EngineStats, StepRecord
from servewise.engine.structured import CompiledGrammar, GrammarCompiler, GrammarState
from servewise.errors import ContextLengthError, InvalidRequestError
from servewise.layers.cpu_backend import CpuBackend
from servewise.models.registry import build_model
from servewise.types import FinishReason, RequestOutput, RequestTimings, SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from servewise.loading import Checkpoint

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class ModelInfo:
    """What the server needs to know about the loaded model."""

    name: str  # served model name
    path: str
    max_model_len: int  # context length the engine accepts (prompt + output)
    vocab_size: int
    num_kv_blocks: int
    block_size: int
    cpu_kernels: str | None = None  # CPU kernel build in use (avx512, avx2, generic, none); None on a GPU


_KV_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_kv_dtype(config: EngineConfig, model_dtype: torch.dtype) -> torch.dtype:
    """fp16 K/V on CPU (half the memory and bandwidth) unless fp32 exactness was asked for."""
    choice = config.cache.kv_cache_dtype
    if choice != "auto":
        return _KV_DTYPES[choice]
    if model_dtype != torch.float32:
        return model_dtype
    return torch.float32 if config.device.linear_backend == "fp32" else torch.float16


def resolve_device(config: DeviceConfig) -> torch.device:
    """The torch device to run on, or a ConfigError saying why it cannot be used here."""
    dev = torch.device(config.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {config.device!r}: this torch ({torch.__version__}) sees no CUDA GPU; "
                              "install a CUDA build of torch or use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {config.device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def model_dtype(config: DeviceConfig, dev: torch.device) -> torch.dtype:
    """fp32 on CPU (the native kernels take it from there); bf16 on a GPU unless fp32 was asked for."""
    if dev.type == "cpu" or config.linear_backend == "fp32":
        return torch.float32
    return torch.bfloat16


def check_prompt(info: ModelInfo, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
    """Raise InvalidRequestError / ContextLengthError if this model cannot serve the request
    (a fleet's ingress checks with its replicas' ModelInfo before routing)."""
    if not prompt_token_ids:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    if any(not 0 <= t < info.vocab_size for t in prompt_token_ids):
        raise InvalidRequestError(f"prompt token ids must be in [0, {info.vocab_size})", param="prompt")
    params.check_token_ids(info.vocab_size)
    needed = len(prompt_token_ids) + (params.max_tokens or 1)
    if needed > info.max_model_len:
        what = f"{len(prompt_token_ids)} prompt tokens"
        if params.max_tokens:
            what += f" + {params.max_tokens} max_tokens = {needed} tokens"
        raise ContextLengthError(
            f"this model's maximum context length is {info.max_model_len} tokens, "
            f"but the request needs {what}", param="max_tokens" if params.max_tokens else "prompt")


def kv_capacity(config: EngineConfig, arch: ModelArchConfig, kv_dtype: torch.dtype) -> tuple[int, int]:
    """(KV-cache blocks, max_model_len) of an engine with this config and model: the pool the
    budget buys, and the longest prompt + output it accepts (the model's, the pool's, the cap)."""
    num_blocks = num_blocks_for_budget(arch, config.cache, kv_dtype)
    max_model_len = min(arch.max_position_embeddings, num_blocks * config.cache.block_size,
                        config.scheduler.max_model_len or arch.max_position_embeddings)
    return num_blocks, max_model_len


class LLMEngine:
    def __init__(self, config: EngineConfig, checkpoint: Checkpoint | None = None) -> None:
        self.config = config
        if checkpoint is None:
            from servewise.loading import load_checkpoint

            checkpoint = load_checkpoint(config.model)
        ckpt = checkpoint
        dev = resolve_device(config.device)
        dtype = model_dtype(config.device, dev)
        if config.device.num_threads is not None:
            torch.set_num_threads(config.device.num_threads)
        self.tokenizer = ckpt.tokenizer
        arch = ckpt.arch
        kv_dtype = resolve_kv_dtype(config, dtype)
        num_blocks, self.max_model_len = kv_capacity(config, arch, kv_dtype)
        block_size = config.cache.block_size
        cpu = CpuBackend.create(config.device.linear_backend, config.device.cpu_isa) if dev.type == "cpu" else None
        model = build_model(arch, ckpt.tensors, max_positions=self.max_model_len, device=dev, dtype=dtype,
                            use_native_kernels=dev.type == "cpu", source=ckpt.path, quantized=ckpt.quantized,
                            transform=cpu.quantize if cpu is not None else None)
        if cpu is not None:
            cpu.install(model)
        self.runner = ModelRunner(model, num_blocks, block_size, dev, kv_dtype,
                                  cuda_graphs=not config.device.enforce_eager, max_model_len=self.max_model_len,
                                  max_num_seqs=config.scheduler.max_num_seqs)
        if config.fault.step_delay_s > 0:
            self.runner = SlowRunner(self.runner, config.fault.step_delay_s)  # type: ignore[assignment]
        self._failures = FailureDraw(config.fault)
        self.kv_cache = KVCacheManager(num_blocks, block_size, config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.kv_cache)  # its cost model learns from _account
        self.sampler = Sampler()
        self.speculator = create_speculator(config.speculative, self.scheduler.cost_model)
        self.vocab_size = arch.vocab_size
        self.eos_token_ids = frozenset(ckpt.tokenizer.eos_token_ids) | frozenset(arch.eos_token_ids)
        self.grammars = GrammarCompiler(ckpt.tokenizer, arch.vocab_size, self.eos_token_ids, config.structured)
        self.model_info = ModelInfo(name=config.served_model_name or ckpt.model_name, path=ckpt.path,
                                    max_model_len=self.max_model_len, vocab_size=arch.vocab_size,
                                    num_kv_blocks=num_blocks, block_size=block_size,
                                    cpu_kernels=cpu.isa if cpu is not None else None)
        self.stats = EngineStats()
        self._groups: dict[str, RequestGroup] = {}
        self._pending_final: set[str] = set()  # groups finished outside step() (aborts, failures)
        self._seed_rng = random.Random(config.seed)

    # ---- requests -------------------------------------------------------------------------
    def num_cached_prompt_tokens(self, prompt_token_ids: Sequence[int]) -> int:
        """Leading prompt tokens the prefix cache holds right now (thread-safe probe, for admission)."""
        return self.kv_cache.num_cached_prefix_tokens(prompt_token_ids)

    def validate_prompt(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        """Raise InvalidRequestError / ContextLengthError if the request cannot be served."""
        check_prompt(self.model_info, prompt_token_ids, params)

    def add_request(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams, *,
                    arrival_s: float | None = None, priority: int = 0, deadline_s: float | None = None,
                    tpot_s: float | None = None, grammar: CompiledGrammar | None = None) -> None:
        """grammar: ``params.grammar`` compiled already (AsyncEngine compiles off this thread); when
        missing, it is compiled here, blocking (offline use). tpot_s: its SLO class's time-per-output-token
        target, which sizes the prefill share of steps while it decodes (slo/step_budget.py)."""
        if request_id in self._groups:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", param="request_id")
        self.validate_prompt(prompt_token_ids, params)
        if params.grammar is not None and (grammar is None or grammar.spec != params.grammar):
            grammar = self.grammars.compile(params.grammar).compiled
        timings = RequestTimings(arrival_s=arrival_s if arrival_s is not None else time.monotonic())
        children = []
        for index in range(params.n):
            seed = params.seed if params.seed is not None else self._seed_rng.getrandbits(63)
            generator = torch.Generator().manual_seed((seed * 1_000_003 + index) % (1 << 63))
            children.append(Request(
                request_id=request_id if params.n == 1 else f"{request_id}#{index}", group_id=request_id,
                index=index, prompt_token_ids=list(prompt_token_ids), params=params, timings=timings,
                eos_token_ids=self.eos_token_ids, max_total_tokens=self.max_model_len, generator=generator,
                priority=priority, deadline_s=deadline_s, tpot_s=tpot_s,
                grammar=GrammarState(grammar, self.eos_token_ids) if params.grammar and grammar else None))
        group = RequestGroup(request_id, children, [StopAwareDetokenizer(self.tokenizer, params)
                                                    for _ in children], pending_times=[[] for _ in children])
        self._groups[request_id] = group
        for child in children:
            self.scheduler.add_request(child)
        self.stats.num_prompt_tokens += len(prompt_token_ids)
        if self._failures.fails():
            self._fail_group(request_id, FinishReason.ERROR, "injected failure (--fault-fail-ratio)")

    def abort_request(self, request_id: str, reason: FinishReason = FinishReason.ABORT) -> None:
        """Finish a request now (its blocks are free when this returns); the next step reports it."""
        self._fail_group(request_id, reason, None)

    def _fail_group(self, group_id: str, reason: FinishReason, error: str | None) -> None:
        group = self._groups.get(group_id)
        if group is None:
            return
        for child in group.children:
            if not child.is_finished:
                child.error = error
                self.scheduler.finish(child, reason)
        self._pending_final.add(group_id)

    @property
    def has_unfinished_requests(self) -> bool:
        return bool(self._groups)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._groups)

    # ---- the step -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, sample, and return what changed for each request."""
        try:
            self.speculator.propose(self.scheduler.running)
        except Exception:  # drafts are an optimisation: a bug in them must not stop the engine
            logger.exception("speculative drafting failed; this step runs without drafts")
            for request in self.scheduler.running:
                request.draft_token_ids = []
        sched = self.scheduler.schedule()
        touched: set[str] = set(self._pending_final)
        self._pending_final = set()
        if not sched.is_empty:
            start = time.monotonic()
            sampled = self._run_isolated(sched)
            now = time.monotonic()
            self._account(sched, now - start)
            self._update(sched, sampled, start, now)
            touched.update(c.request.group_id for c in sched.chunks)
        return self._collect(touched)

    def _run_isolated(self, sched: ScheduleOutput) -> Emitted:
        """Run the batch; if it fails, run each request alone and fail only those that fail again."""
        try:
            return self._run(sched.chunks)
        except Exception:
            if len(sched.chunks) == 1:
                logger.exception("engine step failed for request %s", sched.chunks[0].request.request_id)
                self._fail_chunk(sched.chunks[0])
                return {}
            logger.warning("engine step failed for a batch of %d; isolating", len(sched.chunks), exc_info=True)
        sampled: Emitted = {}
        for chunk in sched.chunks:
            try:
                sampled.update(self._run([chunk]))
            except Exception:
                logger.exception("request %s failed in the engine", chunk.request.request_id)
                self._fail_chunk(chunk)
        return sampled

    def _fail_chunk(self, chunk: ScheduledChunk) -> None:
        self._fail_group(chunk.request.group_id, FinishReason.ERROR,
                         "the engine failed while computing this request")

    def _run(self, chunks: list[ScheduledChunk]) -> Emitted:
        out: RunnerOutput = self.runner.execute(ScheduleOutput(chunks=chunks))
        if not out.sample_requests:
            return {}
        return sample_with_drafts(self.sampler, out)

    def _account(self, sched: ScheduleOutput, elapsed_s: float) -> None:
        """Attribute the step's time to its requests by their share of the step's tokens."""
        total = sched.num_batched_tokens or sum(c.num_new_tokens for c in sched.chunks)
        num_prefill = 0
        for chunk in sched.chunks:
            share = elapsed_s * chunk.num_new_tokens / total
            if chunk.request.num_computed_tokens < chunk.request.num_prompt_tokens:
                chunk.request.timings.prefill_compute_s += share
                num_prefill += chunk.num_new_tokens
            else:
                chunk.request.timings.decode_compute_s += share
        record = StepRecord(duration_s=elapsed_s, num_tokens=total, num_prefill_tokens=num_prefill,
                            num_requests=len(sched.chunks))
        self.stats.record_step(record)
        self.scheduler.cost_model.observe(record)  # the step budget is sized by the engine's own steps
        self.speculator.observe_step(record)  # and drafts by what decode steps of each size take

    def _update(self, sched: ScheduleOutput, emitted: Emitted, step_start_s: float, now: float) -> None:
        for chunk in sched.chunks:
            r = chunk.request
            if r.is_finished:  # failed in isolation, or aborted
                continue
            tokens = emitted.get(id(r), [])
            reason = self._append_tokens(r, tokens, now)
            if r.is_finished:  # the output left its grammar
                continue
            self.scheduler.complete_chunk(chunk, step_start_s, sampled=bool(tokens))
            if chunk.draft_token_ids:
                self.stats.record_draft(len(chunk.draft_token_ids), len(tokens) - 1)
                self.speculator.observe(r, len(chunk.draft_token_ids), len(tokens) - 1)
            if reason is not None:
                self.scheduler.finish(r, reason)

    def _append_tokens(self, r: Request, tokens: list[tuple[int, TokenLogprob | None]], now: float
                       ) -> FinishReason | None:
        """Append the step's tokens in order, up to the first that ends the sequence (its reason)."""
        group = self._groups[r.group_id]
        for token_id, logprob in tokens:
            if r.grammar is not None and not r.grammar.accept(token_id):
                logger.error("request %s: sampled token %d is outside its grammar", r.request_id, token_id)
                self._fail_group(r.group_id, FinishReason.ERROR, "the output left its grammar")
                return None
            r.append_token(token_id)
            if logprob is not None:
                r.new_logprobs.append(logprob)
            group.pending_times[r.index].append(now)
            if r.timings.first_token_s is None:
                r.timings.first_token_s = now
            r.timings.last_token_s = now
            self.stats.num_generation_tokens += 1
            reason = check_stop(r, group.detokenizers[r.index], token_id)
            if reason is not None:
                return reason
        return None

    def _collect(self, group_ids: set[str]) -> list[RequestOutput]:
        outputs = []
        for group_id in group_ids:
            group = self._groups.get(group_id)
            if group is None:
                continue
            if group.finished and group.children[0].timings.finished_s is None:
                group.children[0].timings.finished_s = time.monotonic()
            out = build_output(group, self.tokenizer)
            if out is not None:
                outputs.append(out)
            if group.finished:
                del self._groups[group_id]
                self.stats.record_finish(group.children)
        return outputs

    def snapshot_stats(self) -> EngineStats:
        self.stats.num_running = self.scheduler.num_running
        self.stats.num_waiting = self.scheduler.num_waiting
        self.stats.kv_cache_usage = self.kv_cache.usage
        self.stats.num_free_blocks = self.kv_cache.num_free_blocks
        self.stats.prefix_cache_queries = self.kv_cache.num_prefix_query_tokens
        self.stats.prefix_cache_hits = self.kv_cache.num_prefix_hit_tokens
        self.stats.num_preemptions = self.scheduler.num_preemptions
        return self.stats.copy()
