"""CUDA graphs for decode steps: one replay a step instead of a few dozen kernel launches a layer.

A step in which every request computes exactly one token (steady-state decode) has a shape
fixed by two numbers: how many sequences, and how many KV blocks the longest one spans.
Both are rounded up to a bucket, the batch is padded to it, and the forward pass plus the
LM head captured for that bucket is replayed. Padding rows read and write one spare KV
block that no request owns (``ModelRunner`` allocates it past the pool). Graphs are
captured lazily, the first time a bucket is needed, into one shared memory pool.

Mixed steps (prefill chunks) run eagerly: their shapes vary too much to capture.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from servewise.layers.attention import AttentionMetadata
from servewise.models.llama import KVCache, LlamaForCausalLM

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)
MIN_BLOCK_BUCKET = 8


def bucket_up(value: int, buckets: tuple[int, ...]) -> int | None:
    return next((b for b in buckets if b >= value), None)


def block_buckets(max_blocks: int) -> tuple[int, ...]:
    """Powers of two from MIN_BLOCK_BUCKET, the last one capped at max_blocks."""
    out, width = [], MIN_BLOCK_BUCKET
    while width < max_blocks:
        out.append(width)
        width *= 2
    out.append(max_blocks)
    return tuple(out)


@dataclass
class DecodeBatch:
    """One decode step on the host, padded to its graph's bucket (lists of ints)."""

    num_seqs: int  # real rows; rows past it are padding
    input_ids: list[int]
    positions: list[int]
    slot_block_ids: list[int]
    slot_offsets: list[int]
    block_tables: list[list[int]]  # [padded rows][block bucket]
    ctx_lens: list[int]


def pad_decode_batch(input_ids: list[int], positions: list[int], tables: list[list[int]], block_size: int,
                     num_rows: int, num_blocks: int, pad_block: int) -> DecodeBatch:
    """Pad one-token-per-request inputs to ``num_rows`` × ``num_blocks``; padding rows attend to one
    key in ``pad_block`` and write their K/V there."""
    n = len(input_ids)
    extra = num_rows - n
    return DecodeBatch(
        num_seqs=n,
        input_ids=input_ids + [0] * extra,
        positions=positions + [0] * extra,
        slot_block_ids=[t[p // block_size] for t, p in zip(tables, positions, strict=True)] + [pad_block] * extra,
        slot_offsets=[p % block_size for p in positions] + [0] * extra,
        block_tables=[t + [pad_block] * (num_blocks - len(t)) for t in tables] + [[pad_block] * num_blocks] * extra,
        ctx_lens=[p + 1 for p in positions] + [1] * extra,
    )


class _Graph:
    """Static input buffers, the captured graph, and its logits output."""

    def __init__(self, num_rows: int, num_blocks: int, block_size: int, pad_block: int,
                 device: torch.device) -> None:
        # The int64 inputs share one buffer (a row each), so they arrive in one host-to-device copy.
        self.inputs = torch.tensor([[0] * num_rows, [0] * num_rows, [pad_block] * num_rows, [0] * num_rows],
                                   dtype=torch.long, device=device)
        self.input_ids, self.positions, slot_block_ids, slot_offsets = self.inputs
        self.meta = AttentionMetadata(
            num_tokens=num_rows, slot_block_ids=slot_block_ids, slot_offsets=slot_offsets,
            num_paged_tokens=num_rows,
            paged_block_tables=torch.full((num_rows, num_blocks), pad_block, dtype=torch.int32, device=device),
            paged_token_rows=torch.arange(num_rows, dtype=torch.int32, device=device),
            paged_ctx_lens=torch.ones(num_rows, dtype=torch.int32, device=device), dense_segments=[],
            paged_max_ctx_len=num_blocks * block_size)
        self.graph = torch.cuda.CUDAGraph()
        self.logits: torch.Tensor | None = None

    def load(self, batch: DecodeBatch) -> None:
        m = self.meta
        self.inputs.copy_(torch.tensor([batch.input_ids, batch.positions, batch.slot_block_ids, batch.slot_offsets]),
                          non_blocking=True)
        m.paged_ctx_lens.copy_(torch.tensor(batch.ctx_lens, dtype=torch.int32), non_blocking=True)
        m.paged_block_tables.copy_(torch.tensor(batch.block_tables, dtype=torch.int32), non_blocking=True)


class CudaGraphDecoder:
    """Captures and replays decode-step graphs for one model and its KV caches."""

    def __init__(self, model: LlamaForCausalLM, kv_caches: list[KVCache], block_size: int, pad_block: int,
                 max_blocks_per_seq: int, device: torch.device, max_batch: int = BATCH_BUCKETS[-1]) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.pad_block = pad_block
        self.device = device
        self.batch_buckets = tuple(b for b in BATCH_BUCKETS if b <= max_batch)
        self.block_buckets = block_buckets(max_blocks_per_seq)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple[int, int], _Graph] = {}
        self.num_replays = 0
        self.capture_s = 0.0
        self.failed = False  # a capture failed: eager from then on

    def bucket(self, num_seqs: int, num_blocks: int) -> tuple[int, int] | None:
        rows = bucket_up(num_seqs, self.batch_buckets)
        width = bucket_up(max(num_blocks, 1), self.block_buckets)
        return None if rows is None or width is None else (rows, width)

    def _forward(self, g: _Graph) -> torch.Tensor:
        hidden = self.model(g.input_ids, g.positions, g.meta, self.kv_caches)
        return self.model.compute_logits(hidden)

    def _capture(self, rows: int, width: int) -> _Graph:
        with torch.cuda.device(self.device):
            return self._capture_on_device(rows, width)

    def _capture_on_device(self, rows: int, width: int) -> _Graph:
        t = time.perf_counter()
        g = _Graph(rows, width, self.block_size, self.pad_block, self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up: lazy cuBLAS/allocator initialisation happens outside capture
            self._forward(g)
        torch.cuda.current_stream(self.device).wait_stream(side)
        # thread_local: the server's other threads may touch CUDA (they do not, today) during a capture.
        with torch.cuda.graph(g.graph, pool=self.pool, capture_error_mode="thread_local"):
            g.logits = self._forward(g)
        torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t
        self.capture_s += elapsed
        logger.info("captured a CUDA graph for decode steps of ≤ %d sequences × %d KV blocks in %.2f s",
                    rows, width, elapsed)
        return g

    def run(self, input_ids: list[int], positions: list[int], tables: list[list[int]]) -> torch.Tensor | None:
        """Logits [len(input_ids), vocab] for a one-token-per-request step, or None when no bucket fits."""
        key = self.bucket(len(input_ids), max(len(t) for t in tables))
        if key is None:
            return None
        g = self.graphs.get(key)
        if g is None:
            if self.failed:
                return None
            try:
                g = self.graphs[key] = self._capture(*key)
            except RuntimeError:  # a kernel that cannot be captured: serve eagerly rather than fail requests
                logger.exception("CUDA graph capture failed; decode steps run eagerly from now on")
                self.failed = True
                return None
        g.load(pad_decode_batch(input_ids, positions, tables, self.block_size, key[0], key[1], self.pad_block))
        g.graph.replay()
        self.num_replays += 1
        assert g.logits is not None
        return g.logits[:len(input_ids)]
