"""The HTTP client against the scripted fake server: timing accuracy, outcomes, request bodies."""

import asyncio
import json
import statistics

import pytest

from servewise.bench.client import BenchClient, Endpoint, TargetConfig, build_body
from servewise.bench.fake_server import FakeBehaviour
from servewise.bench.records import Outcome, RequestRecord

from .factories import make_config, run_with_server, scripted_config, scripted_dataset

TOLERANCE_S = 0.005


def test_ttft_and_itl_match_the_scripted_delays():
    behaviour = FakeBehaviour(ttft_s=0.060, itl_s=0.020, num_tokens=6)
    result, _ = run_with_server(lambda url: make_config(url, load={"num_requests": 5}), behaviour)
    records = result.points[0].records
    assert all(r.outcome is Outcome.OK for r in records)
    assert statistics.median(r.ttft_s for r in records) == pytest.approx(0.060, abs=TOLERANCE_S)
    for record in records:
        assert len(record.token_times_s) == 6
        assert statistics.median(record.itls_s) == pytest.approx(0.020, abs=TOLERANCE_S)
        assert record.tpot_s == pytest.approx(0.020, abs=TOLERANCE_S)
        assert record.e2e_s == pytest.approx(0.060 + 5 * 0.020, abs=3 * TOLERANCE_S)
    summary = result.points[0].summary
    assert summary.ttft.p50_s == pytest.approx(0.060, abs=TOLERANCE_S)
    assert summary.itl.p50_s == pytest.approx(0.020, abs=TOLERANCE_S)


SCRIPT = [
    {}, {}, {},  # ok
    {"status": 429, "retry_after": "2"}, {"status": 429, "retry_after": "1"}, {"status": 429},
    {"status": 503, "retry_after": "5"},
    {"status": 400}, {"status": 404},
    {"status": 500},
    {"error_after_tokens": 2},
    {"drop_after_tokens": 2},
    {"omit_done": True},
    {"ttft_s": 3.0},  # beyond the 0.5 s request timeout, after 200 headers
]


def test_outcome_counts_are_exact(tmp_path):
    dataset = scripted_dataset(tmp_path, SCRIPT)
    result, server = run_with_server(
        lambda url: scripted_config(url, dataset, len(SCRIPT), target={"request_timeout_s": 0.5}))
    summary = result.points[0].summary
    assert summary.outcomes == {"ok": 3, "shed": 4, "client_error": 2, "server_error": 1, "timeout": 1,
                                "connection_error": 1, "stream_error": 1, "incomplete": 1}
    assert summary.num_shed_with_retry_after == 3
    assert summary.num_lost == 4  # stream error, cut, no [DONE], timeout: all after 200 headers
    assert len(server.received) == len(SCRIPT)
    by_outcome = {r.outcome: r for r in result.points[0].records}
    assert by_outcome[Outcome.STREAM_ERROR].error == "scripted stream error"
    assert len(by_outcome[Outcome.STREAM_ERROR].token_times_s) == 2
    assert len(by_outcome[Outcome.CONNECTION_ERROR].token_times_s) == 2
    assert by_outcome[Outcome.SERVER_ERROR].error == "HTTP 500: scripted 500"


def test_request_bodies_stream_with_usage_and_send_ignore_eos_only_when_asked():
    _, server = run_with_server(lambda url: make_config(url, load={"num_requests": 1}))
    body = server.received[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "fake-model"  # the first id of GET /models
    assert body["max_tokens"] == 8 and "ignore_eos" not in body
    assert body["messages"][0]["role"] == "user"
    assert server.received_auth == [None]
    _, server = run_with_server(lambda url: make_config(
        url, load={"num_requests": 1}, target={"ignore_eos": True, "api_key": "sk-test", "model": "mine"}))
    assert server.received[0]["ignore_eos"] is True and server.received[0]["model"] == "mine"
    assert server.received_auth == ["Bearer sk-test"]


def test_completions_endpoint_sends_a_prompt():
    result, server = run_with_server(lambda url: make_config(url, target={"endpoint": Endpoint.COMPLETIONS}))
    assert "prompt" in server.received[0] and "messages" not in server.received[0]
    assert result.points[0].summary.num_ok == 4


def test_tokens_come_from_usage_when_present_else_from_content_chunks():
    result, _ = run_with_server(lambda url: make_config(url, load={"num_requests": 1}),
                                FakeBehaviour(num_tokens=5))
    record = result.points[0].records[0]
    assert record.usage_reported and record.num_output_tokens == 5 and record.num_input_tokens is not None
    result, _ = run_with_server(lambda url: make_config(url, load={"num_requests": 1}),
                                FakeBehaviour(num_tokens=5, send_usage=False))
    record = result.points[0].records[0]
    assert not record.usage_reported and record.num_output_tokens == 5


def test_connection_refused_is_a_connection_error():
    async def send_to_closed_port():
        async with BenchClient(TargetConfig("http://127.0.0.1:9/v1", request_timeout_s=5)) as client:
            record = RequestRecord(index=0, scheduled_s=0.0, send_s=0.0, outcome=Outcome.OK)
            return await client.send(b"{}", record, 0.0)

    record = asyncio.run(send_to_closed_port())
    assert record.outcome is Outcome.CONNECTION_ERROR and not record.accepted and record.error


def test_build_body_joins_a_conversation_for_completions():
    target = TargetConfig("http://x/v1", endpoint=Endpoint.COMPLETIONS)
    body = json.loads(build_body((("system", "PREFIX"), ("user", "question")), 4, "m", target))
    assert body["prompt"] == "PREFIX\n\nquestion" and body["max_tokens"] == 4


def test_target_config_validates_and_finds_the_server_root():
    assert TargetConfig("http://h:1/v1/").server_root == "http://h:1"
    assert TargetConfig("http://h:1/api").server_root == "http://h:1/api"
    with pytest.raises(ValueError):
        TargetConfig("h:1/v1")
