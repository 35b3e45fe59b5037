"""Attention over the paged KV cache.

A step's flat batch has two kinds of tokens, chosen by the model runner:
- *paged* tokens (decodes and tiny chunks after a context): each attends to its
  request's blocks through the paged kernel (native C on CPU, a gather in torch
  elsewhere);
- *dense* segments (prefill chunks): scaled_dot_product_attention over the chunk,
  plus the cached context gathered from the blocks when there is one.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from servewise.layers import native


@dataclass
class DenseSegment:
    """A prefill chunk computed with dense attention."""

    start: int  # index of its first token in the flat batch
    num_tokens: int  # query tokens in this chunk
    num_context_tokens: int  # tokens of the request already in the cache before this chunk
    block_ids: torch.Tensor  # [ceil((context + chunk) / block_size)] int64, the request's blocks


@dataclass
class AttentionMetadata:
    """Per-step description of the flat batch, built by the model runner.

    Paged tokens come first in the batch: tokens [0, num_paged_tokens).
    """

    num_tokens: int
    slot_block_ids: torch.Tensor  # [T] int64: block each token's K/V is written to
    slot_offsets: torch.Tensor  # [T] int64: offset inside that block
    num_paged_tokens: int
    paged_block_tables: torch.Tensor  # [R, max_blocks] int32, one row per request with paged tokens
    paged_token_rows: torch.Tensor  # [num_paged_tokens] int32: row of paged_block_tables per token
    paged_ctx_lens: torch.Tensor  # [num_paged_tokens] int32: keys visible to each token (its position + 1)
    dense_segments: list[DenseSegment]
    paged_max_ctx_len: int | None = None  # max of paged_ctx_lens, known on the host (saves a GPU sync a layer)


class PagedAttention:
    """Writes a layer's new K/V into the cache and computes attention for the batch."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, use_native: bool = True) -> None:
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        self.use_native = use_native
        self.native_lib: ctypes.CDLL | None = None  # set by the CPU backend (its ISA's build); None: the default

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        # q: [T, Hq, D]; k, v: [T, Hkv, D]; caches: [num_blocks, Hkv, block_size, D] -> [T, Hq, D]
        k_cache[meta.slot_block_ids, :, meta.slot_offsets] = k.to(k_cache.dtype)
        v_cache[meta.slot_block_ids, :, meta.slot_offsets] = v.to(v_cache.dtype)
        if not meta.dense_segments:
            return self._paged(q, k_cache, v_cache, meta)
        out = torch.empty_like(q)
        num_paged = meta.num_paged_tokens
        if num_paged:
            out[:num_paged] = self._paged(q[:num_paged], k_cache, v_cache, meta)
        for seg in meta.dense_segments:
            end = seg.start + seg.num_tokens
            out[seg.start:end] = self._dense(q[seg.start:end], k[seg.start:end], v[seg.start:end],
                                             k_cache, v_cache, seg)
        return out

    def _native_lib(self, q: torch.Tensor) -> ctypes.CDLL | None:
        if not self.use_native or q.device.type != "cpu" or q.dtype != torch.float32:
            return None
        return self.native_lib or native.load_library()

    def _paged(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               meta: AttentionMetadata) -> torch.Tensor:
        lib = self._native_lib(q)
        if lib is not None and k_cache.dtype in (torch.float32, torch.float16) and native.supports(
                self.num_heads, self.num_kv_heads, self.head_dim, k_cache.shape[2]):
            return native.paged_attention(lib, q, k_cache, v_cache, meta.paged_block_tables,
                                          meta.paged_token_rows, meta.paged_ctx_lens, self.scale)
        return paged_attention_torch(q, k_cache, v_cache, meta.paged_block_tables, meta.paged_token_rows,
                                     meta.paged_ctx_lens, self.scale, meta.paged_max_ctx_len)

    def _dense(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, seg: DenseSegment) -> torch.Tensor:
        group = self.num_heads // self.num_kv_heads
        if seg.num_context_tokens == 0:
            keys, values, mask = k.transpose(0, 1), v.transpose(0, 1), None  # [Hkv, n, D]
        else:
            total = seg.num_context_tokens + seg.num_tokens
            keys = _gather_blocks(k_cache, seg.block_ids, total).to(q.dtype)
            values = _gather_blocks(v_cache, seg.block_ids, total).to(q.dtype)
            rows = torch.arange(seg.num_tokens, device=q.device).unsqueeze(1) + seg.num_context_tokens
            mask = torch.arange(total, device=q.device).unsqueeze(0) <= rows  # [n, total]
        if group > 1:
            keys = keys.repeat_interleave(group, dim=0)
            values = values.repeat_interleave(group, dim=0)
        out = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), keys.unsqueeze(0),
                                             values.unsqueeze(0), attn_mask=mask, is_causal=mask is None,
                                             scale=self.scale)
        return out.squeeze(0).transpose(0, 1)  # [n, Hq, D]


def _gather_blocks(cache: torch.Tensor, block_ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    # cache: [NB, Hkv, BS, D] -> [Hkv, num_tokens, D] for one request
    blocks = cache.index_select(0, block_ids)  # [nb, Hkv, BS, D]
    num_kv_heads, head_dim = cache.shape[1], cache.shape[3]
    return blocks.transpose(0, 1).reshape(num_kv_heads, -1, head_dim)[:, :num_tokens]


def paged_attention_torch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          block_tables: torch.Tensor, token_rows: torch.Tensor, ctx_lens: torch.Tensor,
                          scale: float, max_ctx_len: int | None = None) -> torch.Tensor:
    """Reference paged attention in plain torch (any device): gather, mask, softmax."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    max_len = int(ctx_lens.max().item()) if max_ctx_len is None else max_ctx_len
    num_blocks = (max_len + block_size - 1) // block_size
    tables = block_tables.long()[token_rows.long(), :num_blocks]  # [T, nb]

    def gather(cache: torch.Tensor) -> torch.Tensor:
        blocks = cache[tables]  # [T, nb, Hkv, BS, D]
        return blocks.permute(0, 2, 1, 3, 4).reshape(num_tokens, num_kv_heads, -1, head_dim)

    keys, values = gather(k_cache).to(q.dtype), gather(v_cache).to(q.dtype)  # [T, Hkv, nb*BS, D]
    qg = q.view(num_tokens, num_kv_heads, group, head_dim)
    scores = torch.matmul(qg, keys.transpose(-1, -2)) * scale  # [T, Hkv, G, L]
    positions = torch.arange(scores.shape[-1], device=q.device)
    invisible = positions.view(1, 1, 1, -1) >= ctx_lens.view(-1, 1, 1, 1).to(q.device)
    probs = torch.softmax(scores.float().masked_fill(invisible, float("-inf")), dim=-1)  # fp32 even for bf16
    return torch.matmul(probs.to(values.dtype), values).reshape(num_tokens, num_heads, head_dim)
