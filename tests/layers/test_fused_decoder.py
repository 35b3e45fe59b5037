"""The native one-call-per-layer path computes what the PyTorch layers compute."""

from __future__ import annotations

import pytest
import torch

from servewise.layers import native
from servewise.layers.fused_decoder import FusedDecoder
from servewise.types import SamplingParams
from tests.engine.conftest import make_engine

pytestmark = pytest.mark.skipif(native.load_library() is None, reason="no C compiler here")


@pytest.mark.parametrize(("arch", "block_size", "kv_dtype"), [
    ("llama", 16, "fp16"), ("qwen2", 8, "fp32"), ("llama", 4, "fp16")])
def test_fused_layers_match_the_pytorch_layers(tiny_dirs, arch, block_size, kv_dtype):
    engine = make_engine(tiny_dirs[arch], backend="auto", block_size=block_size, kv_cache_dtype=kv_dtype)
    model = engine.runner.model
    assert isinstance(model.run_layers, FusedDecoder)
    fused = model.run_layers
    prompts = [[5 + i for i in range(n)] for n in (3, 9, 1)]
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
    engine.step()  # 13 prompt tokens: a small, fully paged step
    sched = engine.scheduler.schedule()  # the next step: three decodes
    input_ids, positions, meta, _ = engine.runner._prepare(sched.chunks)
    assert not meta.dense_segments and fused.accepts(input_ids.unsqueeze(1).float(), engine.runner.kv_caches)
    kv_before = [(k.clone(), v.clone()) for k, v in engine.runner.kv_caches]
    with torch.inference_mode():
        x = model.embed_tokens(input_ids)
        got = fused(positions, x.clone(), meta, engine.runner.kv_caches)
        kv_fused = [(k.clone(), v.clone()) for k, v in engine.runner.kv_caches]
        for (k, v), (k0, v0) in zip(engine.runner.kv_caches, kv_before, strict=True):
            k.copy_(k0)
            v.copy_(v0)
        want = fused.fallback(positions, x.clone(), meta, engine.runner.kv_caches)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
    for (k, v), (k2, v2) in zip(engine.runner.kv_caches, kv_fused, strict=True):
        torch.testing.assert_close(k.float(), k2.float(), atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(v.float(), v2.float(), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("isa", ["auto", "avx2"])
def test_a_prefill_step_with_tiles_of_many_tokens_matches_the_pytorch_layers(tiny_dirs, isa):
    # 40 prompt tokens: a dense segment for the PyTorch layers, tiles of up to 16 tokens in C
    engine = make_engine(tiny_dirs["llama"], backend="auto", block_size=8, kv_cache_dtype="fp32",
                         max_num_batched_tokens=64, cpu_isa=isa)
    model = engine.runner.model
    fused = model.run_layers
    engine.add_request("decoding", [7, 8, 9], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    engine.step()
    engine.add_request("prefill", [5 + i % 50 for i in range(40)], SamplingParams(max_tokens=2, temperature=0))
    sched = engine.scheduler.schedule()  # one decode and a 40-token chunk
    input_ids, positions, meta, _ = engine.runner._prepare(sched.chunks)
    assert len(meta.dense_segments) == 1 and meta.num_paged_tokens == 1
    kv_before = [(k.clone(), v.clone()) for k, v in engine.runner.kv_caches]
    with torch.inference_mode():
        x = model.embed_tokens(input_ids)
        got = fused(positions, x.clone(), meta, engine.runner.kv_caches)
        for (k, v), (k0, v0) in zip(engine.runner.kv_caches, kv_before, strict=True):
            k.copy_(k0)
            v.copy_(v0)
        want = fused.fallback(positions, x.clone(), meta, engine.runner.kv_caches)
    # SDPA and the C tiles sum in different orders; a last-bit difference can move a 15-bit
    # activation rounding step (~1e-4 here). A masking or tiling error would be O(1).
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
