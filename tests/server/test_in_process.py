"""Behaviour that needs a hand inside the engine: a failing request, a stalled step."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from servewise.config import CacheConfig, EngineConfig, ServerConfig
from servewise.server.app import create_app, local_backend_factory
from servewise.server.slo_runtime import SLOSettings
from tests.server.conftest import InProcessServer


@pytest.fixture()
def server(tiny_dirs):
    config = EngineConfig(model=str(tiny_dirs["llama"]), cache=CacheConfig(num_blocks=256))
    app = create_app(ServerConfig(), config, local_backend_factory(config), SLOSettings(watchdog_timeout_s=1.0))
    with InProcessServer(app) as srv:
        yield srv


def _chat(base: str, **extra) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, **extra}
    return httpx.post(base + "/v1/chat/completions", json=body, timeout=60)


def test_a_request_that_fails_in_the_engine_gets_500_and_others_are_served(server):
    llm_engine = server.app.state.servewise.backend.engine.engine
    real = llm_engine.sampler.sample

    def flaky(logits, requests):
        if any(r.params.seed == 666 for r in requests):
            raise RuntimeError("injected sampling failure")
        return real(logits, requests)

    llm_engine.sampler.sample = flaky
    bad = _chat(server.base_url, seed=666)
    assert bad.status_code == 500 and bad.json()["error"]["type"] == "internal_server_error"
    stream = httpx.post(server.base_url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "seed": 666, "stream": True})
    events = [line for line in stream.text.splitlines() if line.startswith("data: ")]
    assert '"error"' in events[-2] and events[-1] == "data: [DONE]"
    results = []
    threads = [threading.Thread(target=lambda: results.append(_chat(server.base_url))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 4
    assert httpx.get(server.base_url + "/ready").status_code == 200


def test_watchdog_turns_ready_503_while_a_step_is_stuck(server):
    llm_engine = server.app.state.servewise.backend.engine.engine
    release = threading.Event()
    real_step = llm_engine.step

    def stuck_step():
        release.wait(30)
        return real_step()

    llm_engine.step = stuck_step
    result: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: result.append(_chat(server.base_url)))
    worker.start()
    t = time.monotonic()
    ready = httpx.get(server.base_url + "/ready")
    while ready.status_code == 200 and time.monotonic() - t < 5:
        time.sleep(0.1)
        ready = httpx.get(server.base_url + "/ready")
    assert ready.status_code == 503 and "stalled" in ready.json()["reason"]
    assert time.monotonic() - t < 3.0  # the timeout is 1 s
    assert httpx.get(server.base_url + "/health").status_code == 200  # liveness is not readiness
    llm_engine.step = real_step
    release.set()
    worker.join(30)
    assert result and result[0].status_code == 200
    assert httpx.get(server.base_url + "/ready").status_code == 200


def test_admission_is_asked_only_for_the_prompt_tokens_the_prefix_cache_lacks(server):
    admission = server.app.state.servewise.backend.admission
    real_admit, asked = admission.admit, []

    def spy(key, prompt_tokens, *args, **kwargs):
        asked.append(prompt_tokens)
        return real_admit(key, prompt_tokens, *args, **kwargs)

    admission.admit = spy
    system = {"role": "system", "content": "You are a terse assistant. " * 20}
    for question in ("hello", "what is up"):
        body = {"messages": [system, {"role": "user", "content": question}], "max_tokens": 2}
        assert httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
    block_size = server.app.state.servewise.backend.engine.engine.kv_cache.block_size
    assert asked[0] > 100 and asked[1] < 2 * block_size  # the shared system prompt is cached the second time
