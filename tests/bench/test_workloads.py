"""Workload generators: exact lengths, seeds, shared prefixes, the long/chat mix, datasets."""

import asyncio
import random

import pytest

from servewise.bench.client import BenchClient, TargetConfig
from servewise.bench.distributions import parse_length
from servewise.bench.fake_server import FakeOpenAIServer, fake_token_count
from servewise.bench.tokenizer import ApproxTokenCounter, ServerTokenCounter
from servewise.bench.workloads import Workload, WorkloadConfig, WorkloadKind

from .factories import DATA_DIR


def build_with_server(config, num_requests, seed=0):
    async def scenario():
        async with FakeOpenAIServer() as server, BenchClient(TargetConfig(server.base_url)) as client:
            workload = Workload(config, ServerTokenCounter(client, "fake-model"))
            return await workload.build(num_requests, random.Random(seed))

    return asyncio.run(scenario())


def build_offline(config, num_requests, seed=0):
    return asyncio.run(Workload(config, ApproxTokenCounter()).build(num_requests, random.Random(seed)))


def test_synthetic_prompts_have_exact_lengths_from_the_distribution():
    config = WorkloadConfig(input_len=parse_length("uniform:5,400"), output_len=parse_length("uniform:20,60"))
    requests = build_with_server(config, 30)
    for request in requests:
        assert fake_token_count(request.messages[0][1]) == request.num_input_tokens
        assert 5 <= request.num_input_tokens <= 400 and 20 <= request.max_tokens <= 60
    assert len({r.num_input_tokens for r in requests}) > 10


def test_fixed_lengths_are_exact():
    requests = build_with_server(WorkloadConfig(input_len=parse_length("77"), output_len=parse_length("9")), 20)
    assert [fake_token_count(r.messages[0][1]) for r in requests] == [77] * 20
    assert {r.max_tokens for r in requests} == {9}
    assert len({r.messages for r in requests}) == 20  # different passages, no accidental cache hits


def test_a_seed_fixes_the_requests():
    config = WorkloadConfig(input_len=parse_length("uniform:10,50"), output_len=parse_length("uniform:1,30"))
    assert build_offline(config, 15, seed=3) == build_offline(config, 15, seed=3)
    assert build_offline(config, 15, seed=3) != build_offline(config, 15, seed=4)


def test_shared_prefix_groups_share_an_exact_system_prompt():
    config = WorkloadConfig(kind=WorkloadKind.SHARED_PREFIX, num_prefix_groups=3, prefix_len=200,
                            input_len=parse_length("20"), output_len=parse_length("5"))
    requests = build_with_server(config, 30)
    prefixes = {r.messages[0] for r in requests}
    assert len(prefixes) == 3
    assert all(role == "system" and fake_token_count(text) == 200 for role, text in prefixes)
    assert all(fake_token_count(r.messages[1][1]) == 20 and r.num_input_tokens == 220 for r in requests)


def test_mixed_has_long_documents_among_chat_turns():
    config = WorkloadConfig(kind=WorkloadKind.MIXED, long_fraction=0.3, input_len=parse_length("uniform:10,40"),
                            long_input_len=parse_length("uniform:500,600"), output_len=parse_length("4"))
    requests = build_offline(config, 200)
    long = [r for r in requests if r.kind == "long"]
    chat = [r for r in requests if r.kind == "chat"]
    assert len(long) + len(chat) == 200
    assert len(long) / 200 == pytest.approx(0.3, abs=0.08)
    assert all(500 <= r.num_input_tokens <= 600 for r in long)
    assert all(10 <= r.num_input_tokens <= 40 for r in chat)


def test_dataset_output_lengths_from_reference_answers_or_fixed():
    config = WorkloadConfig(kind=WorkloadKind.DATASET, dataset_path=str(DATA_DIR / "alpaca_tiny.jsonl"))
    requests = build_with_server(config, 6)
    assert sorted(r.messages[0][1] for r in requests[:3]) == sorted(r.messages[0][1] for r in requests[3:])
    by_prompt = {r.messages[0][1]: r for r in requests}
    oslo = by_prompt["Name the capital city of the given country.\n\nNorway"]
    assert oslo.max_tokens == fake_token_count("The capital of Norway is Oslo.")
    assert oslo.num_input_tokens == fake_token_count(oslo.messages[0][1])
    fixed = WorkloadConfig(kind=WorkloadKind.DATASET, dataset_path=str(DATA_DIR / "alpaca_tiny.jsonl"),
                           output_len=parse_length("12"))
    assert {r.max_tokens for r in build_with_server(fixed, 5)} == {12}


def test_dataset_needs_a_file():
    with pytest.raises(ValueError, match="--dataset"):
        WorkloadConfig(kind=WorkloadKind.DATASET)
