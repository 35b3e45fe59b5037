"""Greedy tokens equal transformers' (fp32, same weights); batch invariance in every scheduling regime."""

from __future__ import annotations

import random

import pytest
import torch
import transformers

from servewise.engine.llm_engine import LLMEngine
from servewise.layers import native
from servewise.types import SamplingParams
from tests.engine.conftest import TEST_DEVICE, make_engine

NUM_TOKENS = 12


def varied_prompts(vocab: int, count: int = 24, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = [1, 2, 3, 5, 8, 13, 16, 17, 31, 33, 50, 64, 65, 100, 127, 128, 150, 200, 7, 9, 40, 77, 90, 180]
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths[:count]]


def hf_greedy(path, prompts: list[list[int]], num_tokens: int = NUM_TOKENS) -> list[list[int]]:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    model = model.to(TEST_DEVICE)
    model.generation_config.eos_token_id = None
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = model.generate(torch.tensor([p], device=TEST_DEVICE), max_new_tokens=num_tokens, do_sample=False,
                                 pad_token_id=0, attention_mask=torch.ones(1, len(p), dtype=torch.long,
                                                                           device=TEST_DEVICE))
            out.append(ids[0, len(p):].tolist())
    return out


def engine_greedy(engine: LLMEngine, prompts: list[list[int]], num_tokens: int = NUM_TOKENS,
                  alone: bool = False) -> list[list[int]]:
    params = SamplingParams(max_tokens=num_tokens, temperature=0, ignore_eos=True)
    results: dict[str, list[int]] = {}
    batches = [[i] for i in range(len(prompts))] if alone else [list(range(len(prompts)))]
    for batch in batches:
        for i in batch:
            engine.add_request(f"p{i}-{random.random()}", prompts[i], params)
        while engine.has_unfinished_requests:
            for out in engine.step():
                results.setdefault(out.request_id.split("-")[0], []).extend(out.outputs[0].token_ids)
    return [results[f"p{i}"] for i in range(len(prompts))]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_greedy_matches_transformers(tiny_dirs, arch):
    path = tiny_dirs[arch]
    engine = make_engine(path)
    prompts = varied_prompts(engine.vocab_size)
    assert engine_greedy(engine, prompts) == hf_greedy(path, prompts)
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks


@pytest.mark.parametrize(("backend", "cpu_isa"), [("fp32", "auto"), ("auto", "auto"), ("auto", "avx2")])
def test_batch_invariance(tiny_dirs, backend, cpu_isa):
    if TEST_DEVICE != "cpu" and backend == "auto":
        pytest.skip("auto is bf16 on a GPU, whose GEMM kernels change with the batch shape")
    features = native.probe_cpu()
    if cpu_isa == "avx2" and (features is None or not features.supports("avx2")):
        pytest.skip("this CPU cannot run the AVX2 kernels")
    path = tiny_dirs["llama"]
    prompts = varied_prompts(300, count=24, seed=1) + varied_prompts(300, count=8, seed=2)  # a batch of 32
    reference = engine_greedy(make_engine(path, backend=backend, cpu_isa=cpu_isa), prompts, alone=True)
    regimes = {
        "batch of 32": make_engine(path, backend=backend, cpu_isa=cpu_isa),
        "tiny prefill chunk": make_engine(path, backend=backend, max_num_batched_tokens=5, cpu_isa=cpu_isa),
        "tiny KV pool (preemption)": make_engine(path, backend=backend, num_blocks=90, cpu_isa=cpu_isa),
    }
    for name, engine in regimes.items():
        assert engine_greedy(engine, prompts) == reference, name
        assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks, name
    assert regimes["tiny KV pool (preemption)"].scheduler.num_preemptions > 0
    cached = regimes["batch of 32"]
    assert engine_greedy(cached, prompts) == reference  # second pass: prompts hit the prefix cache
    assert cached.kv_cache.num_prefix_hit_tokens > 0


def test_shared_prefix_hits_give_the_same_tokens(tiny_dirs):
    path = tiny_dirs["qwen2"]
    rng = random.Random(5)
    prefix = [rng.randrange(3, 300) for _ in range(70)]
    prompts = [prefix + [rng.randrange(3, 300) for _ in range(n)] for n in (1, 5, 20)]
    alone = [engine_greedy(make_engine(path), [p])[0] for p in prompts]
    engine = make_engine(path)
    assert engine_greedy(engine, prompts, alone=True) == alone
    assert engine.kv_cache.num_prefix_hit_tokens >= 2 * 68
