"""`servewise serve --replicas 2` on a local Ray with the embedded model, through real clients:
the OpenAI SDK, prefix affinity, disconnects, fleet shedding, bad input, and a replica killed
under load (last: it leaves the fleet recovering)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import openai
import pytest

from tests.factories import embedded_gguf_path, write_perturbed_gguf
from tests.fleet.conftest import replica_pids, start_fleet, stop_fleet
from tests.server.conftest import metric_value
from tests.server.test_validation import BAD_CHAT

pytestmark = pytest.mark.slow

SLO_FLAGS = ("--slo-class", "interactive:ttft=2s@p99,tpot=150ms,priority=0,slack=1.5",
             "--slo-class", "tight:ttft=50ms,priority=5,slack=1", "--allow-client-slo-class")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    embedded_gguf_path()
    server = start_fleet(tmp_path_factory.mktemp("fleet"), "--replicas", "2", "--replica-threads", "1",
                         "--max-num-seqs", "16", "--kv-cache-memory", "256MiB", *SLO_FLAGS)
    yield server
    assert stop_fleet(server) == 0, server.log()[-3000:]
    assert not replica_pids(), "the replicas outlived the fleet"


@pytest.fixture(scope="module")
def client(fleet):
    return openai.OpenAI(base_url=fleet.v1, api_key="unused", max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def http(fleet):
    with httpx.Client(base_url=fleet.base_url, timeout=180) as c:
        yield c


def test_the_openai_sdk_chats_streams_and_gets_two_choices_through_two_replicas(client):
    model = client.models.list().data[0].id
    r = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=30)
    assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=30,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    two = client.chat.completions.create(model=model, messages=QUESTION, n=2, temperature=1.0, seed=3, max_tokens=8)
    assert sorted(c.index for c in two.choices) == [0, 1] and all(c.message.content for c in two.choices)
    prompts = client.completions.create(model=model, prompt=["The sky is", "Two plus two is"], max_tokens=4)
    assert sorted(c.index for c in prompts.choices) == [0, 1]


def _system(group: int) -> str:
    return f"Group {group} rules. " + " ".join(f"rule{group}x{j}" for j in range(220))


def test_shared_prefix_groups_stick_to_the_replica_that_caches_them(http):
    for group in range(4):
        prefix = http.post("/tokenize", json={"messages": [{"role": "system", "content": _system(group)}],
                                              "add_generation_prompt": False}).json()["count"]
        for i in range(3):
            body = {"messages": [{"role": "system", "content": _system(group)},
                                 {"role": "user", "content": f"question {i} of group {group}?"}], "max_tokens": 1}
            usage = http.post("/v1/chat/completions", json=body).json()["usage"]
            if i > 0:  # every later member of the group landed where the prefix is cached
                assert usage["prompt_tokens_details"]["cached_tokens"] >= prefix - 16, (group, i, usage, prefix)
    metrics = http.get("/metrics").text
    assert metric_value(metrics, "servewise:router_requests_total", reason="prefix_affinity") >= 8


def test_both_replicas_export_their_series_and_the_fleet_reports_each(http):
    metrics = http.get("/metrics").text
    replicas = {line.split('replica="')[1].split('"')[0] for line in metrics.splitlines()
                if line.startswith("servewise:num_requests_running{")}
    assert len(replicas) == 2 and "fleet" not in replicas
    assert metric_value(metrics, "servewise:time_to_first_token_seconds_count", replica="fleet") > 0
    slo = http.get("/v1/slo").json()
    assert set(slo["replicas"]) == replicas and "interactive" in slo["classes"]["classes"]
    assert set(slo["admission"]["replicas"]) == replicas


def test_a_client_disconnect_frees_the_replicas_kv_blocks(fleet, http):
    body = {"prompt": "Write a very long story.", "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=fleet.base_url, timeout=60) as c, c.stream("POST", "/v1/completions", json=body) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: {")
            if seen >= 5:
                break
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        metrics = http.get("/metrics").text
        running = metric_value(metrics, "servewise:num_requests_running")
        used = metric_value(metrics, "servewise:kv_cache_usage_perc")
        if running == 0 and used == 0:
            break
        time.sleep(0.5)
    assert running == 0 and used == 0, (running, used)
    assert metric_value(metrics, "servewise:request_success_total", replica="fleet", finished_reason="abort") >= 1


def test_bad_input_gets_the_same_openai_errors_as_the_single_server(http, live_server):
    with httpx.Client(base_url=live_server.base_url, timeout=60) as single:
        for body, param in BAD_CHAT:
            ours, theirs = http.post("/v1/chat/completions", json=body), single.post("/v1/chat/completions", json=body)
            assert ours.status_code == theirs.status_code == 400, (param, ours.text)
            assert ours.json() == theirs.json()
        for path, payload in (("/v1/completions", {"prompt": "x " * 9000, "max_tokens": 5}),
                              ("/v1/completions", {"model": "nope", "prompt": "x"}),
                              ("/v1/completions", {"prompt": [999_999_999]})):
            ours, theirs = http.post(path, json=payload), single.post(path, json=payload)
            assert ours.status_code == theirs.status_code and ours.json() == theirs.json(), ours.text
        assert http.post("/v1/chat/completions", content=b"{nope").json() == \
            single.post("/v1/chat/completions", content=b"{nope").json()
    assert http.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 3}).status_code == 200


async def _stream(client: httpx.AsyncClient, prompt: str, max_tokens: int, slo_class: str = "interactive") -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True, "temperature": 0}
    out: dict = {"status": None, "tokens": 0, "finish": None, "error": None, "done": False, "headers": {}}
    async with client.stream("POST", "/v1/completions", json=body, headers={"x-slo-class": slo_class}) as resp:
        out["status"], out["headers"] = resp.status_code, dict(resp.headers)
        if resp.status_code != 200:
            out["body"] = json.loads(await resp.aread())
            return out
        async for line in resp.aiter_lines():
            if line == "data: [DONE]":
                out["done"] = True
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    out["error"] = chunk["error"]
                    continue
                choice = chunk["choices"][0]
                out["tokens"] += bool(choice["text"])
                out["finish"] = choice["finish_reason"] or out["finish"]
    return out


def _long_prompt(i: int, words: int = 500) -> str:
    return f"Document {i}. " + " ".join(f"term{(i * 31 + j) % 4999}" for j in range(words))


def test_the_fleet_sheds_with_429_and_retry_after_when_every_replica_would_miss(fleet):
    async def run() -> tuple[list[dict], list[dict]]:
        async with httpx.AsyncClient(base_url=fleet.base_url, timeout=300) as c:
            burst = [asyncio.create_task(_stream(c, _long_prompt(i), 2)) for i in range(6)]
            await asyncio.sleep(1.0)  # the burst is queued on both replicas
            tight = await asyncio.gather(*(_stream(c, f"quick {i}", 2, "tight") for i in range(4)))
            return list(await asyncio.gather(*burst)), list(tight)

    burst, tight = asyncio.run(run())
    shed = [r for r in tight if r["status"] == 429]
    assert shed, tight
    for r in shed:
        assert r["body"]["error"]["type"] == "overloaded_error" and int(r["headers"]["retry-after"]) >= 1
    assert all(r["status"] in (200, 429) for r in burst)
    assert all(r["done"] and r["finish"] == "length" for r in burst if r["status"] == 200)
    calm = asyncio.run(_one(fleet, "tight"))
    assert calm["status"] == 200  # no backlog, no shedding


async def _one(fleet, slo_class: str) -> dict:
    async with httpx.AsyncClient(base_url=fleet.base_url, timeout=120) as c:
        return await _stream(c, "calm", 2, slo_class)


def test_a_shadow_of_another_model_agrees_less_than_the_same_version_does(fleet, http, tmp_path):
    """Identical versions agree 100 % (tests/fleet/test_rollout_e2e.py); a candidate whose weights
    differ (the embedded model with its final norm perturbed: same tokenizer, another model) must not.
    (The fp32 backend is no longer such a candidate: it agrees with auto's 15-bit activations.)"""
    candidate = write_perturbed_gguf(embedded_gguf_path(), tmp_path / "smollm2-candidate.gguf")
    spec = {"mode": "shadow", "shadow": {"sample": 1.0, "duration": 300}, "candidate": {"model": str(candidate)}}
    assert http.post("/v1/admin/rollout", json=spec).status_code == 201
    prompts = [f"Write a short poem about the number {i} and the sea." for i in range(16)]
    for prompt in prompts:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 64, "temperature": 0}
        assert http.post("/v1/chat/completions", json=body).status_code == 200
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        report = http.get("/v1/admin/rollout").json()["shadow"]
        if report["num_mirrored"] + report["num_skipped"] >= len(prompts):
            break
        time.sleep(1)
    # A slower candidate sheds some mirrors (mirroring goes first under load): enough must remain.
    assert report["greedy"]["num"] >= 3 and report["candidate_error_rate"] == 0, report
    assert report["greedy"]["token_agreement"] < 1.0, report  # different weights part ways
    assert http.post("/v1/admin/rollout/abort").json()["rollout"]["phase"] == "aborted"
    deadline = time.monotonic() + 120  # an aborted candidate's replicas go away
    while time.monotonic() < deadline and len(replica_pids()) > 2:
        time.sleep(1)
    assert len(replica_pids()) == 2


def test_killing_a_replica_under_load_fails_no_request_that_had_not_started(fleet, http):
    pids = replica_pids()
    assert len(pids) == 2

    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=fleet.base_url, timeout=300) as c:
            tasks = [asyncio.create_task(_stream(c, f"Story {i}: once upon a time", 40)) for i in range(6)]
            await asyncio.sleep(2.0)  # streams are flowing on both replicas
            os.kill(pids[0], signal.SIGKILL)
            tasks += [asyncio.create_task(_stream(c, f"After {i}: once upon a time", 8)) for i in range(6)]
            return list(await asyncio.gather(*tasks))

    results = asyncio.run(run())
    for r in results:
        assert r["status"] == 200, r
        if r["error"] is None:
            assert r["done"] and r["finish"] == "length", r  # served to the end
        else:  # a stream the dead replica had started: an error event naming the cause, then [DONE]
            assert r["tokens"] > 0 and r["done"] and "replica" in r["error"]["message"], r
    cut = [r for r in results if r["error"] is not None]
    assert len(cut) < len(results)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(replica_pids()) < 2:
        time.sleep(1)
    assert http.post("/v1/completions", json={"prompt": "still there?", "max_tokens": 3}).status_code == 200
