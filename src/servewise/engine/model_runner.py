"""Turns a ScheduleOutput into one forward pass over a flat batch and returns logits."""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass, field

import torch

from servewise.config import CacheConfig, ModelArchConfig
from servewise.engine.cuda_graphs import CudaGraphDecoder
from servewise.engine.request import Request
from servewise.engine.scheduler import ScheduledChunk, ScheduleOutput
from servewise.layers.attention import AttentionMetadata, DenseSegment
from servewise.models.llama import KVCache, LlamaForCausalLM

# Chunks this small after a cached context go through the paged kernel token by token;
# larger ones use dense attention (GEMM-shaped, much faster per token).
MAX_PAGED_CHUNK_TOKENS = 4
# A step this small is computed entirely through the paged kernel (every token, prefill
# included): per-token attention is cheap at this size. (The quantized CPU backend runs
# every step natively whatever its shape: layers/fused_decoder.py.)
MAX_ALL_PAGED_STEP_TOKENS = 16


def uses_paged_attention(chunk: ScheduledChunk, num_step_tokens: int) -> bool:
    """Whether ``chunk``'s attention goes through the paged kernel (else dense) in a step of
    ``num_step_tokens`` tokens; read before the step's results are applied."""
    return num_step_tokens <= MAX_ALL_PAGED_STEP_TOKENS or (
        chunk.request.num_computed_tokens > 0 and chunk.num_new_tokens <= MAX_PAGED_CHUNK_TOKENS)


def kv_bytes_per_block(arch: ModelArchConfig, block_size: int, dtype: torch.dtype) -> int:
    element_size = torch.empty(0, dtype=dtype).element_size()
    return 2 * arch.num_hidden_layers * arch.num_key_value_heads * block_size * arch.head_dim * element_size


def num_blocks_for_budget(arch: ModelArchConfig, cache: CacheConfig, dtype: torch.dtype) -> int:
    if cache.num_blocks is not None:
        return cache.num_blocks
    return max(2, cache.kv_cache_memory_bytes // kv_bytes_per_block(arch, cache.block_size, dtype))


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeros; on CPU in pages the OS commits only when first written, so a KV pool sized for the
    worst case costs memory only for the blocks requests actually fill."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    numel = math.prod(shape)
    pages = mmap.mmap(-1, max(1, numel * torch.empty(0, dtype=dtype).element_size()))  # anonymous: zero-filled
    return torch.frombuffer(pages, dtype=dtype, count=numel).view(shape)  # the tensor keeps `pages` alive


@dataclass
class RunnerOutput:
    """Model runner -> engine: the logits of every request that samples this step."""

    # [sum(1 + len(d) for d in drafts), vocab] fp32: per request in sample_requests order, one row for
    # its last token, then one per draft token it verifies (the position after each)
    logits: torch.Tensor
    sample_requests: list[Request]
    drafts: list[tuple[int, ...]] = field(default_factory=list)  # per request; () = one row (empty: all ())


def _output(logits: torch.Tensor, requests: list[Request], drafts: list[tuple[int, ...]] | None = None
            ) -> RunnerOutput:
    return RunnerOutput(logits.to(device="cpu", dtype=torch.float32), requests,  # fp32 for sampling
                        drafts or [() for _ in requests])


def sample_rows(order: list[ScheduledChunk]) -> list[int]:
    """Rows of the flat batch whose logits the sampler needs: each sampling chunk's last token and, when
    it verifies a draft, the positions of the draft tokens before it."""
    rows: list[int] = []
    start = 0
    for chunk in order:
        start += chunk.num_new_tokens
        if chunk.samples:
            rows.extend(range(start - 1 - len(chunk.draft_token_ids), start))
    return rows


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, num_blocks: int, block_size: int, device: torch.device,
                 dtype: torch.dtype, *, cuda_graphs: bool = False, max_model_len: int = 0,
                 max_num_seqs: int = 256) -> None:
        arch = model.config
        self.model = model
        self.block_size = block_size
        self.device = device
        use_graphs = cuda_graphs and device.type == "cuda"
        # With CUDA graphs, one spare block past the pool takes the padding rows' K/V.
        shape = (num_blocks + use_graphs, arch.num_key_value_heads, block_size, arch.head_dim)
        self.kv_caches: list[KVCache] = [
            (lazy_zeros(shape, dtype, device), lazy_zeros(shape, dtype, device))
            for _ in range(arch.num_hidden_layers)
        ]
        self.graphs: CudaGraphDecoder | None = None
        if use_graphs:
            self.graphs = CudaGraphDecoder(model, self.kv_caches, block_size, pad_block=num_blocks,
                                           max_blocks_per_seq=-(-max_model_len // block_size), device=device,
                                           max_batch=max_num_seqs)

    def execute(self, sched: ScheduleOutput) -> RunnerOutput:
        chunks = sched.chunks
        if self.graphs is not None and chunks and all(
                c.num_new_tokens == 1 and c.request.num_computed_tokens > 0 for c in chunks):
            out = self._execute_graph(chunks)
            if out is not None:
                return out
        input_ids, positions, meta, order = self._prepare(chunks)
        sampling = [c for c in order if c.samples]
        with torch.inference_mode():
            hidden = self.model(input_ids, positions, meta, self.kv_caches)
            if not sampling:
                return RunnerOutput(torch.empty(0, self.model.config.vocab_size), [])
            rows = torch.tensor(sample_rows(order), device=self.device)
            logits = self.model.compute_logits(hidden.index_select(0, rows))
        return _output(logits, [c.request for c in sampling], [c.draft_token_ids for c in sampling])

    def _execute_graph(self, chunks: list[ScheduledChunk]) -> RunnerOutput | None:
        assert self.graphs is not None
        requests = [c.request for c in chunks]
        with torch.inference_mode():
            logits = self.graphs.run([r.token_ids[r.num_computed_tokens] for r in requests],
                                     [r.num_computed_tokens for r in requests], [r.block_ids for r in requests])
            if logits is None:
                return None
            rows = [i for i, c in enumerate(chunks) if c.samples]
            if len(rows) < len(chunks):
                logits = logits.index_select(0, torch.tensor(rows, device=self.device))
        return _output(logits, [chunks[i].request for i in rows])

    def _prepare(self, chunks: list[ScheduledChunk]
                 ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[ScheduledChunk]]:
        num_step_tokens = sum(c.num_new_tokens for c in chunks)
        paged = [c for c in chunks if uses_paged_attention(c, num_step_tokens)]
        paged_ids = {id(c) for c in paged}
        dense = [c for c in chunks if id(c) not in paged_ids]
        bs = self.block_size
        ids: list[int] = []
        pos: list[int] = []
        slot_blocks: list[int] = []
        token_rows: list[int] = []
        ctx_lens: list[int] = []
        tables: list[list[int]] = []
        for row, chunk in enumerate(paged):
            r, s, n = chunk.request, chunk.request.num_computed_tokens, chunk.num_new_tokens
            ids.extend(chunk.token_ids)
            pos.extend(range(s, s + n))
            slot_blocks.extend(r.block_ids[p // bs] for p in range(s, s + n))
            token_rows.extend([row] * n)
            ctx_lens.extend(range(s + 1, s + n + 1))
            tables.append(r.block_ids)
        segments: list[DenseSegment] = []
        for chunk in dense:
            r, s, n = chunk.request, chunk.request.num_computed_tokens, chunk.num_new_tokens
            segments.append(DenseSegment(start=len(ids), num_tokens=n, num_context_tokens=s,
                                         block_ids=torch.tensor(r.block_ids[:-(-(s + n) // bs)],
                                                                dtype=torch.long, device=self.device)))
            ids.extend(chunk.token_ids)
            pos.extend(range(s, s + n))
            slot_blocks.extend(r.block_ids[p // bs] for p in range(s, s + n))
        width = max((len(t) for t in tables), default=0)
        padded = [t + [0] * (width - len(t)) for t in tables]
        dev = self.device

        def tensor(values: list, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=dev)

        positions = tensor(pos)
        meta = AttentionMetadata(
            num_tokens=len(ids),
            slot_block_ids=tensor(slot_blocks),
            slot_offsets=positions % bs,
            num_paged_tokens=len(token_rows),
            paged_block_tables=tensor(padded, torch.int32).reshape(len(padded), width),
            paged_token_rows=tensor(token_rows, torch.int32),
            paged_ctx_lens=tensor(ctx_lens, torch.int32),
            dense_segments=segments,
            paged_max_ctx_len=max(ctx_lens, default=0),
        )
        return tensor(ids), positions, meta, paged + dense
