"""API keys, per-tenant rate limits, usage and cost, against a live server on a tiny model."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import metric_value, start_server, stop_server

KEYS = "sk-alice=alice;rpm=3, sk-bob=bob;class=batch, sk-carol=carol, sk-ops=ops;admin"
CHAT = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("keys"), "--model", str(tiny_dirs["llama"]),
                       "--price-per-device-hour", "3.6", "--allow-client-slo-class",
                       env={"SERVEWISE_API_KEYS": KEYS}, name="keys")
    yield srv
    stop_server(srv)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


PROTECTED = [("GET", "/v1/models", None), ("POST", "/v1/chat/completions", CHAT),
             ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}), ("POST", "/tokenize", {"prompt": "x"}),
             ("POST", "/detokenize", {"tokens": [5]}), ("GET", "/v1/slo", None), ("GET", "/metrics", None),
             ("GET", "/version", None)]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_every_non_public_route_needs_a_valid_key(server, method, path, body):
    for headers in ({}, auth("sk-wrong"), {"Authorization": "Basic abc"}):
        r = httpx.request(method, server.base_url + path, json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (path, headers, r.text)
        assert r.json()["error"]["type"] == "authentication_error" and "sk-" not in r.json()["error"]["message"]
    ok = httpx.request(method, server.base_url + path, json=body, headers=auth("sk-carol"), timeout=60)
    assert ok.status_code == 200, ok.text


def test_public_routes_answer_without_a_key(server):
    assert httpx.get(server.base_url + "/health").status_code == 200
    assert httpx.get(server.base_url + "/ready").status_code == 200


def test_rate_limit_names_the_limit_with_its_retry_after_and_spares_other_tenants(server):
    url = server.v1 + "/chat/completions"
    for _ in range(3):
        assert httpx.post(url, json=CHAT, headers=auth("sk-alice"), timeout=60).status_code == 200
    limited = httpx.post(url, json=CHAT, headers=auth("sk-alice"), timeout=60)
    assert limited.status_code == 429
    err = limited.json()["error"]
    assert err["type"] == "rate_limit_error" and "requests_per_minute" in err["message"]
    # 3 per minute refill one request every 20 s; the first three went out just now
    assert 18 <= int(limited.headers["Retry-After"]) <= 21
    assert httpx.post(url, json=CHAT, headers=auth("sk-bob"), timeout=60).status_code == 200


def test_a_key_may_ask_for_a_less_urgent_class_but_not_a_more_urgent_one(server):
    url = server.v1 + "/chat/completions"
    up = httpx.post(url, json=CHAT, headers={**auth("sk-bob"), "X-SLO-Class": "interactive"}, timeout=60)
    assert up.status_code == 403 and up.json()["error"]["type"] == "permission_error", up.text
    assert "'batch'" in up.json()["error"]["message"] and up.json()["error"]["param"] == "priority"
    assert httpx.post(url, json=CHAT, headers={**auth("sk-bob"), "X-SLO-Class": "batch"}, timeout=60).status_code == 200
    down = httpx.post(url, json={**CHAT, "priority": "batch"}, headers=auth("sk-carol"), timeout=60)
    assert down.status_code == 200


def test_usage_per_tenant_adds_up_and_is_admin_only(tiny_dirs, tmp_path_factory):
    # a fresh server: its usage is exactly what this test sends
    srv = start_server(tmp_path_factory.mktemp("usage"), "--model", str(tiny_dirs["llama"]),
                       "--price-per-device-hour", "3.6", env={"SERVEWISE_API_KEYS": KEYS}, name="usage")
    try:
        sent = {"carol": [0, 0, 0], "bob": [0, 0, 0]}  # requests, prompt tokens, completion tokens
        for tenant, key in (("carol", "sk-carol"), ("bob", "sk-bob")):
            for path, body in (("/chat/completions", CHAT), ("/chat/completions", {**CHAT, "max_tokens": 9, "n": 2}),
                               ("/completions", {"prompt": ["abc", "defg"], "max_tokens": 3})):
                u = httpx.post(srv.v1 + path, json=body, headers=auth(key), timeout=60).json()["usage"]
                sent[tenant][0] += 1
                sent[tenant][1] += u["prompt_tokens"]
                sent[tenant][2] += u["completion_tokens"]
        assert httpx.get(srv.v1 + "/usage", headers=auth("sk-carol")).status_code == 403
        usage = httpx.get(srv.v1 + "/usage", headers=auth("sk-ops")).json()
        tenants = usage["tenants"]
        for tenant, (requests, prompt, completion) in sent.items():
            got = tenants[tenant]
            assert (got["num_requests"], got["prompt_tokens"], got["completion_tokens"]) == (requests, prompt, completion)
        metrics = httpx.get(srv.base_url + "/metrics", headers=auth("sk-ops")).text
        busy = metric_value(metrics, "servewise:engine_busy_seconds_total")
        attributed = sum(t["prefill_device_s"] + t["decode_device_s"] for t in tenants.values())
        assert attributed == pytest.approx(busy, rel=0.01)
        assert usage["total"]["cost_dollars"] == pytest.approx(busy * 3.6 / 3600, rel=0.01)
        assert metric_value(metrics, "servewise:tenant_completion_tokens_total", tenant="bob") == sent["bob"][2]
    finally:
        stop_server(srv)
