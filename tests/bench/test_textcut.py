"""Passages of an exact token count, with the server's /tokenize and with a local tokenizer.json."""

import asyncio
import random

from tokenizers import Tokenizer

from servewise.bench.client import BenchClient, TargetConfig
from servewise.bench.corpus import BUILTIN_CORPUS
from servewise.bench.fake_server import FakeOpenAIServer, fake_token_count
from servewise.bench.textcut import TextCutter
from servewise.bench.tokenizer import LocalTokenCounter, ServerTokenCounter

from .factories import write_tiny_tokenizer

# Short, odd, and longer than the whole corpus (passages wrap around its end).
LENGTHS = [1, 2, 3, 7, 31, 100, 257, 1000, 2500]


def test_exact_lengths_with_the_servers_tokenize():
    async def scenario():
        async with FakeOpenAIServer() as server, BenchClient(TargetConfig(server.base_url)) as client:
            cutter = TextCutter(BUILTIN_CORPUS, ServerTokenCounter(client, "fake-model"))
            rng = random.Random(0)
            return [(n, await cutter.cut(n, rng.randrange(cutter.num_words))) for n in LENGTHS * 2]

    for n, (text, count) in asyncio.run(scenario()):
        assert count == n
        assert fake_token_count(text) == n


def test_exact_lengths_with_a_local_tokenizer_json(tmp_path):
    path = write_tiny_tokenizer(tmp_path / "tokenizer.json")
    reference = Tokenizer.from_file(str(path))
    cutter = TextCutter(BUILTIN_CORPUS, LocalTokenCounter.from_path(str(path)))
    rng = random.Random(1)

    async def cut_all():
        return [(n, await cutter.cut(n, rng.randrange(cutter.num_words))) for n in LENGTHS + list(range(4, 60))]

    for n, (text, count) in asyncio.run(cut_all()):
        assert count == n
        assert len(reference.encode(text, add_special_tokens=False).ids) == n


def test_passages_are_real_text_from_the_chosen_word():
    class WordCounter:
        name, max_model_len = "words", None

        async def count(self, text):
            return len(text.split())

    cutter = TextCutter("alpha beta gamma delta", WordCounter())
    assert asyncio.run(cutter.cut(3, 2)) == ("gamma delta\n\nalpha", 3)
    assert cutter.passage(1, 2) == "beta gamma"
