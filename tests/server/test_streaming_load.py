"""Disconnects free their blocks; concurrent greedy requests match solo ones; metrics add up."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.server.conftest import metric_value

pytestmark = pytest.mark.slow


def _metrics(base: str) -> str:
    return httpx.get(base + "/metrics", timeout=30).text


async def _stream_text(client: httpx.AsyncClient, prompt: str, max_tokens: int = 24) -> str:
    body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": max_tokens,
            "stream": True}
    parts = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                import json

                chunk = json.loads(line[6:])
                if chunk["choices"]:
                    parts.append(chunk["choices"][0]["delta"].get("content") or "")
    return "".join(parts)


def test_disconnected_streams_are_aborted_and_free_their_blocks(live_server):
    async def open_and_drop(client: httpx.AsyncClient) -> None:
        body = {"messages": [{"role": "user", "content": "Write a long story about a dragon."}],
                "max_tokens": 500, "stream": True, "ignore_eos": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            seen = 0
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    seen += 1
                    if seen >= 2:
                        break  # closing the stream drops the connection

    async def main() -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=live_server.base_url, timeout=120, limits=limits) as client:
            await asyncio.gather(*(open_and_drop(client) for _ in range(20)))

    asyncio.run(main())
    deadline = time.monotonic() + 2.0
    while True:
        text = _metrics(live_server.base_url)
        running = metric_value(text, "servewise:num_requests_running")
        usage = metric_value(text, "servewise:kv_cache_usage_perc")
        if (running == 0 and usage == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert running == 0 and usage == 0
    t = time.monotonic()
    r = httpx.post(live_server.v1 + "/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                              "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and time.monotonic() - t < 10


def test_concurrent_greedy_streams_match_solo_runs(live_server):
    prompts = [f"Tell me one fact about the number {i}." for i in range(16)]

    async def main() -> tuple[list[str], list[str]]:
        async with httpx.AsyncClient(base_url=live_server.base_url, timeout=300) as client:
            solo = [await _stream_text(client, p) for p in prompts]
            together = await asyncio.gather(*(_stream_text(client, p) for p in prompts))
        return solo, list(together)

    solo, together = asyncio.run(main())
    assert all(solo)
    assert together == solo


def test_metrics_count_what_was_sent(live_server):
    base = live_server.base_url
    before = _metrics(base)
    n_ok, max_tokens = 3, 5
    for _ in range(n_ok):
        r = httpx.post(base + "/v1/completions", json={"prompt": "Hi there", "max_tokens": max_tokens,
                                                       "ignore_eos": True}, timeout=60)
        assert r.status_code == 200
    bad = httpx.post(base + "/v1/completions", json={"prompt": "x", "n": 99}, timeout=60)
    assert bad.status_code == 400
    after = _metrics(base)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("servewise:request_success_total", finished_reason="length") == n_ok
    assert delta("servewise:request_failure_total", error_type="invalid_request") == 1
    assert delta("servewise:generation_tokens_total") == n_ok * max_tokens
    assert delta("servewise:time_to_first_token_seconds_count") == n_ok
    assert delta("servewise:e2e_request_latency_seconds_count") == n_ok
    assert delta("servewise:inter_token_latency_seconds_count") == n_ok * (max_tokens - 1)
    assert delta("servewise:request_queue_time_seconds_count") == n_ok
    assert delta("servewise:prompt_tokens_total") > 0
    assert delta("servewise:prefix_cache_queries_total") > 0
    for name in ("servewise:num_requests_waiting", "servewise:kv_cache_usage_perc",
                 "servewise:num_preemptions_total", "servewise:prefix_cache_hits_total",
                 "servewise:request_prefill_time_seconds_count", "servewise:request_decode_time_seconds_count"):
        assert name in after
