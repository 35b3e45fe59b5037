"""The planner's requests are the bench's, tokenized as the server tokenizes them; replays."""

from __future__ import annotations

import asyncio
import json

import pytest

from servewise.bench.client import Endpoint, TargetConfig, build_body
from servewise.bench.config import BenchConfig
from servewise.bench.distributions import parse_length
from servewise.bench.metrics import summarize
from servewise.bench.records import Outcome, RequestRecord
from servewise.bench.results import BenchResult, PointResult
from servewise.bench.schedule import LoadConfig, sweep
from servewise.bench.slo import SloSpec
from servewise.bench.workloads import Workload, WorkloadConfig, WorkloadKind, build_point
from servewise.config import ServerConfig
from servewise.loading import load_checkpoint
from servewise.plan.workload import RequestFactory, bench_run_of, replay, token_counter
from servewise.server.protocol import ChatCompletionRequest
from servewise.server.validation import parse_chat

WORKLOAD = WorkloadConfig(kind=WorkloadKind.SHARED_PREFIX, input_len=parse_length("uniform:8,24"),
                          output_len=parse_length("uniform:4,12"), num_prefix_groups=2, prefix_len=40)


@pytest.fixture(scope="module")
def tokenizer(tiny_dirs):
    return load_checkpoint(str(tiny_dirs["llama"])).tokenizer


def bench_point(tokenizer, load):
    """What `servewise bench` builds for point 0, counting tokens as the server's /tokenize would."""
    return asyncio.run(build_point(0, load.points[0], load, Workload(WORKLOAD, token_counter("auto", tokenizer))))


def test_prompts_are_the_token_ids_the_server_computes_for_the_bench_requests(tokenizer):
    load = LoadConfig(sweep(rates=[2.0]), num_requests=6, seed=4)
    factory = RequestFactory(WORKLOAD, tokenizer)
    workload = factory.point(0, load.points[0], load)
    assert workload.arrivals_s is not None and len(workload.requests) == 6
    bench_requests, arrivals = bench_point(tokenizer, load)
    assert tuple(arrivals) == workload.arrivals_s
    for sim, bench in zip(workload.requests, bench_requests, strict=True):
        body = json.loads(build_body(bench.messages, bench.max_tokens, "tiny", TargetConfig("http://x/v1")))
        valid = parse_chat(ChatCompletionRequest(**body), tokenizer, "tiny", ServerConfig())
        assert sim.prompt_token_ids == valid.prompts[0] and sim.max_tokens == bench.max_tokens
    # shared-prefix: requests of a group share their leading tokens, so prefix caching can hit
    firsts = {r.prompt_token_ids[:30] for r in workload.requests}
    assert len(firsts) <= 2


def test_a_seed_fixes_the_requests(tokenizer):
    load = LoadConfig(sweep(rates=[2.0]), num_requests=5, seed=1)
    a = RequestFactory(WORKLOAD, tokenizer).point(0, load.points[0], load)
    b = RequestFactory(WORKLOAD, tokenizer).point(0, load.points[0], load)
    other = LoadConfig(sweep(rates=[2.0]), num_requests=5, seed=2)
    c = RequestFactory(WORKLOAD, tokenizer).point(0, other.points[0], other)
    assert a == b and a != c


def test_the_completions_endpoint_joins_the_messages(tokenizer):
    load = LoadConfig(sweep(rates=[1.0]), num_requests=2)
    workload = RequestFactory(WORKLOAD, tokenizer, endpoint=Endpoint.COMPLETIONS).point(0, load.points[0], load)
    bench_requests, _ = bench_point(tokenizer, load)
    assert [r.prompt_token_ids for r in workload.requests] == [
        tuple(tokenizer.encode("\n\n".join(c for _, c in b.messages))) for b in bench_requests]


def test_a_replay_keeps_the_measured_send_times_and_output_lengths(tokenizer):
    load = LoadConfig(sweep(rates=[2.0]), num_requests=3, seed=0)
    config = BenchConfig(TargetConfig("http://x/v1"), load, WORKLOAD, SloSpec(ttft_s=1.0), tokenizer="auto")
    records = [RequestRecord(index=i, scheduled_s=0.5 * i, send_s=0.5 * i + 0.01, outcome=Outcome.OK,
                             ttft_s=0.1, e2e_s=0.3, num_output_tokens=3 + i) for i in range(3)]
    records[2].outcome, records[2].num_output_tokens = Outcome.SHED, 0
    result = BenchResult(config.to_dict(), "tiny", "server", "2026-01-01T00:00:00+00:00",
                         [PointResult(load.points[0], 0.0, summarize(records, config.slo), records)])
    run = bench_run_of(result)
    assert run.workload == WORKLOAD and run.slo == SloSpec(ttft_s=1.0) and run.load.seed == 0
    factory = RequestFactory(run.workload, tokenizer, endpoint=run.endpoint, counter=run.tokenizer)
    [(point, workload)] = replay(result, factory, run)
    built = factory.point(0, load.points[0], load)
    assert workload.arrivals_s == (0.01, 0.51, 1.01)
    assert [r.max_tokens for r in workload.requests] == [3, 4, built.requests[2].max_tokens]
    assert [r.prompt_token_ids for r in workload.requests] == [r.prompt_token_ids for r in built.requests]


def test_results_without_a_workload_are_refused():
    result = BenchResult({"workload": {}, "load": {}, "target": {"endpoint": "chat"}}, "m", "approx", "now", [])
    with pytest.raises(ValueError, match="do not describe their workload"):
        bench_run_of(result)
