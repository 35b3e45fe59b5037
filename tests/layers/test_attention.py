import pytest
import torch
import torch.nn.functional as F

from servewise.layers import native
from servewise.layers.attention import AttentionMetadata, DenseSegment, PagedAttention, paged_attention_torch


def _dense_reference(q, keys, values, ctx_len):
    # q: [Hq, D]; keys/values: [L, Hkv, D] -> [Hq, D], attending to the first ctx_len keys
    group = q.shape[0] // keys.shape[1]
    k = keys[:ctx_len].repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, L, D]
    v = values[:ctx_len].repeat_interleave(group, dim=1).transpose(0, 1)
    return F.scaled_dot_product_attention(q.unsqueeze(1), k, v).squeeze(1)


def _paged_case(seed, num_q_heads=6, num_kv_heads=2, head_dim=32, block_size=4, num_blocks=40):
    g = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(num_blocks, num_kv_heads, block_size, head_dim, generator=g)
    v_cache = torch.randn(num_blocks, num_kv_heads, block_size, head_dim, generator=g)
    ctx_lens = torch.tensor([1, 5, 17, 33], dtype=torch.int32)
    perm = torch.randperm(num_blocks, generator=g)
    tables = torch.zeros(4, 9, dtype=torch.int32)
    used = 0
    for row, n in enumerate(ctx_lens.tolist()):
        nb = -(-n // block_size)
        tables[row, :nb] = perm[used:used + nb].int()
        used += nb
    q = torch.randn(4, num_q_heads, head_dim, generator=g)
    return q, k_cache, v_cache, tables, ctx_lens


def _expected(q, k_cache, v_cache, tables, ctx_lens):
    outs = []
    for row, n in enumerate(ctx_lens.tolist()):
        blocks = k_cache[tables[row].long()], v_cache[tables[row].long()]  # [nb, Hkv, BS, D]
        keys, values = (b.transpose(1, 2).reshape(-1, b.shape[1], b.shape[3]) for b in blocks)
        outs.append(_dense_reference(q[row], keys, values, n))
    return torch.stack(outs)


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_paged_attention_matches_dense(seed):
    q, kc, vc, tables, ctx = _paged_case(seed)
    rows = torch.arange(4, dtype=torch.int32)
    out = paged_attention_torch(q, kc, vc, tables, rows, ctx, q.shape[-1] ** -0.5)
    torch.testing.assert_close(out, _expected(q, kc, vc, tables, ctx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(6, 2, 32, 4), (9, 3, 64, 16), (4, 4, 16, 8)])
def test_native_paged_attention_matches_dense(shape):
    lib = native.load_library()
    if lib is None:
        pytest.skip("no C compiler here: the PyTorch fallback is used")
    num_q_heads, num_kv_heads, head_dim, block_size = shape
    q, kc, vc, tables, ctx = _paged_case(3, num_q_heads, num_kv_heads, head_dim, block_size)
    rows = torch.arange(4, dtype=torch.int32)
    out = native.paged_attention(lib, q, kc, vc, tables, rows, ctx, head_dim ** -0.5)
    torch.testing.assert_close(out, _expected(q, kc, vc, tables, ctx), atol=1e-5, rtol=1e-5)


def test_native_result_does_not_depend_on_the_batch():
    lib = native.load_library()
    if lib is None:
        pytest.skip("no C compiler here")
    q, kc, vc, tables, ctx = _paged_case(4)
    rows = torch.arange(4, dtype=torch.int32)
    batch = native.paged_attention(lib, q, kc, vc, tables, rows, ctx, 0.2)
    alone = native.paged_attention(lib, q[2:3], kc, vc, tables[2:3], rows[:1], ctx[2:3], 0.2)
    assert torch.equal(batch[2:3], alone)


def test_dense_segment_with_context_matches_full_causal_attention():
    torch.manual_seed(0)
    heads, kv_heads, dim, bs = 4, 2, 16, 4
    total, context = 11, 6
    k_all, v_all = torch.randn(total, kv_heads, dim), torch.randn(total, kv_heads, dim)
    q_all = torch.randn(total, heads, dim)
    kc, vc = torch.zeros(5, kv_heads, bs, dim), torch.zeros(5, kv_heads, bs, dim)
    blocks = torch.tensor([4, 0, 2])
    pos = torch.arange(total)
    kc[blocks[pos // bs], :, pos % bs] = k_all
    vc[blocks[pos // bs], :, pos % bs] = v_all
    new = pos[context:]
    meta = AttentionMetadata(
        num_tokens=len(new), slot_block_ids=blocks[new // bs], slot_offsets=new % bs, num_paged_tokens=0,
        paged_block_tables=torch.zeros(0, 0, dtype=torch.int32), paged_token_rows=torch.zeros(0, dtype=torch.int32),
        paged_ctx_lens=torch.zeros(0, dtype=torch.int32),
        dense_segments=[DenseSegment(0, len(new), context, blocks)])
    out = PagedAttention(heads, kv_heads, dim)(q_all[context:], k_all[context:], v_all[context:], kc, vc, meta)
    ref = F.scaled_dot_product_attention(
        q_all.transpose(0, 1), k_all.repeat_interleave(2, 1).transpose(0, 1),
        v_all.repeat_interleave(2, 1).transpose(0, 1), is_causal=True).transpose(0, 1)
    torch.testing.assert_close(out, ref[context:], atol=1e-5, rtol=1e-5)
