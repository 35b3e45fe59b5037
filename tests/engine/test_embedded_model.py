"""End to end on the embedded SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

import os

import pytest
import torch
import transformers

from servewise.config import SpeculativeConfig
from servewise.engine.llm import LLM
from servewise.engine.speculative import NoSpeculation
from servewise.loading import load_checkpoint
from servewise.types import SamplingParams
from tests.engine.conftest import TEST_DEVICE, make_engine
from tests.engine.test_engine_correctness import engine_greedy
from tests.factories import embedded_gguf_path

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?", "Write a haiku about the sea.", "2 + 2 =", "Translate 'good morning' to Spanish.",
    "List three primary colors.", "Who wrote Hamlet?", "def fibonacci(n):", "The quick brown fox",
    "Explain photosynthesis in one sentence.", "Once upon a time, in a land far away,",
    "Give me a synonym for happy.", "What is 12 times 12?", "Name a planet in our solar system.",
    "Summarize: The cat sat on the mat. It was warm.", "How many legs does a spider have?",
    "Write a SQL query that selects all rows from users.", "Why is the sky blue?", "Hello! How are you today?",
    "The opposite of hot is", "A long prompt: " + "the history of the Roman empire, " * 12,
    "Q: What is the boiling point of water at sea level?\nA:",
]


@pytest.fixture(scope="module")
def gguf() -> str:
    return embedded_gguf_path()


@pytest.fixture(scope="module")
def chat_prompts(gguf) -> list[list[int]]:
    tok = load_checkpoint(gguf).tokenizer
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}]), add_special_tokens=False)
            for p in PROMPTS]


@pytest.fixture(scope="module")
def transformers_greedy(gguf, chat_prompts) -> list[list[int]]:
    """16 greedy tokens per prompt from transformers fp32 on the same GGUF (dequantized)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                              torch_dtype=torch.float32).eval().to(TEST_DEVICE)
    model.generation_config.eos_token_id = None
    out = []
    with torch.inference_mode():
        for p in chat_prompts:
            ids = model.generate(torch.tensor([p], device=TEST_DEVICE), max_new_tokens=16, do_sample=False,
                                 pad_token_id=2, attention_mask=torch.ones(1, len(p), dtype=torch.long,
                                                                           device=TEST_DEVICE))
            out.append(ids[0, len(p):].tolist())
    return out


def test_greedy_tokens_equal_transformers_on_the_embedded_gguf(gguf, chat_prompts, transformers_greedy):
    engine = make_engine(gguf, backend="fp32", block_size=16, num_blocks=400)
    ours = engine_greedy(engine, chat_prompts, num_tokens=16)
    tok = engine.tokenizer
    for p, mine, theirs in zip(chat_prompts, ours, transformers_greedy, strict=True):
        assert mine == theirs, tok.decode(p)


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="the quantized kernels are CPU kernels")
def test_quantized_greedy_tokens_agree_with_transformers(gguf, chat_prompts, transformers_greedy):
    # 4-bit weights as the GGUF stores them, Q8_0 lm_head, 15-bit activations: at least 20 of
    # the 21 prompts give transformers' 16 tokens exactly (in practice all 21 here).
    engine = make_engine(gguf, backend="auto", block_size=16, num_blocks=400)
    ours = engine_greedy(engine, chat_prompts, num_tokens=16)
    same = sum(mine == theirs for mine, theirs in zip(ours, transformers_greedy, strict=True))
    assert same >= 20, f"{same}/21 prompts agree"


def test_default_engine_answers_paris(gguf):
    llm = LLM()  # no model given: the embedded default, which `gguf` found installed
    result = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                      SamplingParams(temperature=0, max_tokens=30))[0]
    assert "Paris" in result.text
    assert result.outputs[0].finish_reason.value == "stop"


def test_speculation_gives_the_same_greedy_tokens_on_a_copying_prompt(gguf):
    from tests.engine.test_speculative import FreeDraftSpeculator

    llm = LLM(enable_prefix_caching=False, num_speculative_tokens=4)  # no prefix hits: both runs compute alike
    passage = ("The Eiffel Tower was built for the 1889 World's Fair in Paris. It is 330 metres tall and was the "
               "tallest man-made structure in the world for 41 years, until the Chrysler Building was finished.")
    messages = [{"role": "user", "content": f"Rewrite the following text, keeping every fact:\n\n{passage}"}]
    params = SamplingParams(temperature=0, max_tokens=64)
    llm.engine.speculator = NoSpeculation()
    plain = llm.chat(messages, params)[0].outputs[0].token_ids
    llm.engine.speculator = FreeDraftSpeculator(SpeculativeConfig(num_speculative_tokens=4))
    drafted = llm.chat(messages, params)[0].outputs[0].token_ids
    assert drafted == plain
    stats = llm.engine.stats
    assert stats.num_accepted_tokens > len(plain) // 4  # it copies: many tokens came from accepted drafts
