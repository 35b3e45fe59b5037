import asyncio

import pytest
from tokenizers import Tokenizer

from servewise.bench.client import BenchClient, BenchSetupError, TargetConfig
from servewise.bench.fake_server import FakeOpenAIServer, fake_token_count
from servewise.bench.tokenizer import (
    ApproxTokenCounter,
    LocalTokenCounter,
    ServerTokenCounter,
    resolve_token_counter,
)

from .factories import write_tiny_tokenizer


def test_server_counter_uses_tokenize_at_the_server_root():
    async def scenario():
        async with FakeOpenAIServer() as server, BenchClient(TargetConfig(server.base_url)) as client:
            counter = await resolve_token_counter("auto", client, "fake-model")
            return counter, await counter.count("Hello, world and friends!")

    counter, count = asyncio.run(scenario())
    assert isinstance(counter, ServerTokenCounter)
    assert count == fake_token_count("Hello, world and friends!") == 6
    assert counter.max_model_len == 4096


def test_auto_falls_back_to_approx_without_tokenize_but_server_insists():
    async def scenario(spec):
        # Port 9 (discard) refuses connections: no /tokenize to be had.
        async with BenchClient(TargetConfig("http://127.0.0.1:9/v1")) as client:
            return await resolve_token_counter(spec, client, "m")

    assert isinstance(asyncio.run(scenario("auto")), ApproxTokenCounter)
    with pytest.raises(BenchSetupError):
        asyncio.run(scenario("server"))


def test_local_tokenizer_json_and_directory(tmp_path):
    path = write_tiny_tokenizer(tmp_path / "tokenizer.json")
    reference = Tokenizer.from_file(str(path))
    text = "Compost improves almost any soil."
    expected = len(reference.encode(text, add_special_tokens=False).ids)
    for spec in (str(path), str(tmp_path)):
        counter = asyncio.run(_resolve_offline(spec))
        assert isinstance(counter, LocalTokenCounter) and counter.name == f"local:{spec}"
        assert counter.count_now(text) == expected


async def _resolve_offline(spec):
    async with BenchClient(TargetConfig("http://127.0.0.1:9/v1")) as client:
        return await resolve_token_counter(spec, client, "m")


def test_model_path_goes_through_servewise_loading(monkeypatch, tmp_path):
    from servewise import loading

    class FakeCheckpoint:
        class tokenizer:  # noqa: N801 - stands in for a loaded tokenizer object
            @staticmethod
            def encode(text, add_special_tokens=True):
                return [1] * len(text.split()) + ([0] if add_special_tokens else [])

    calls = []
    monkeypatch.setattr(loading, "load_checkpoint", lambda path: calls.append(path) or FakeCheckpoint,
                        raising=False)
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    counter = LocalTokenCounter.from_path(str(tmp_path / "model.gguf"))
    assert counter.count_now("three word text") == 3
    assert calls == [str(tmp_path / "model.gguf")]


def test_bad_tokenizer_paths_are_setup_errors(monkeypatch, tmp_path):
    from servewise import loading

    with pytest.raises(BenchSetupError, match="no tokenizer or model"):
        LocalTokenCounter.from_path(str(tmp_path / "missing.json"))

    def broken_loader(path):
        raise RuntimeError("not a model")

    monkeypatch.setattr(loading, "load_checkpoint", broken_loader, raising=False)
    (tmp_path / "model.gguf").write_bytes(b"junk")
    with pytest.raises(BenchSetupError, match="not a model"):
        LocalTokenCounter.from_path(str(tmp_path / "model.gguf"))


def test_approx_counter_is_four_characters_a_token():
    assert asyncio.run(ApproxTokenCounter().count("x" * 40)) == 10
