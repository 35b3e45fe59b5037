"""Every validation rule answers the right status with an OpenAI-shaped error body."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.slow

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def http(live_server):
    with httpx.Client(base_url=live_server.base_url, timeout=60) as c:
        yield c


def expect_error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "pydantic" not in resp.text.lower() and "traceback" not in resp.text.lower()
    return body["error"]


BAD_CHAT = [
    ({**CHAT, "n": 17}, "n"),
    ({**CHAT, "n": 0}, "n"),
    ({**CHAT, "max_tokens": 0}, "max_tokens"),
    ({**CHAT, "temperature": "hot"}, "temperature"),
    ({**CHAT, "temperature": -1}, "temperature"),
    ({**CHAT, "top_p": 0}, "top_p"),
    ({**CHAT, "top_k": -5}, "top_k"),
    ({**CHAT, "logprobs": True, "top_logprobs": 21}, "logprobs"),
    ({**CHAT, "top_logprobs": 2}, "top_logprobs"),
    ({**CHAT, "stop": ["x"] * 17}, "stop"),
    ({**CHAT, "stop": ["x" * 300]}, "stop"),
    ({**CHAT, "logit_bias": {"abc": 1}}, "logit_bias"),
    ({**CHAT, "logit_bias": {"5": 500}}, "logit_bias"),
    ({**CHAT, "logit_bias": {str(i): 1 for i in range(1100)}}, "logit_bias"),
    ({**CHAT, "logit_bias": {"999999": 1}}, "logit_bias"),
    ({**CHAT, "presence_penalty": 3}, "presence_penalty"),
    ({**CHAT, "seed": "x"}, "seed"),
    ({**CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": []}, "messages"),
    ({"max_tokens": 2}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}] * 1025}, "messages"),
]


@pytest.mark.parametrize(("body", "param"), BAD_CHAT)
def test_bad_chat_parameters_are_400_naming_the_parameter(http, body, param):
    err = expect_error(http.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_malformed_json_is_400(http):
    err = expect_error(http.post("/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"}), 400)
    assert "JSON" in err["message"]


def test_prompt_too_long_says_both_numbers(http):
    ids = list(range(1000, 1000 + 8000))
    err = expect_error(http.post("/v1/completions", json={"prompt": ids, "max_tokens": 500}), 400)
    assert "8192" in err["message"] and "8500" in err["message"]


def test_unknown_model_is_404(http):
    err = expect_error(http.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"


def test_body_over_the_limit_is_413(http):
    huge = {"messages": [{"role": "user", "content": "x" * 70_000}]}
    expect_error(http.post("/v1/chat/completions", json=huge), 413)


def test_bad_completions_prompts(http):
    expect_error(http.post("/v1/completions", json={"prompt": [], "max_tokens": 1}), 400)
    expect_error(http.post("/v1/completions", json={"prompt": [[1, 2]] * 65, "max_tokens": 1}), 400)
    expect_error(http.post("/v1/completions", json={"prompt": [-1, 5], "max_tokens": 1}), 400)
    expect_error(http.post("/v1/completions", json={"prompt": "x", "echo": True, "logprobs": 1}), 400)


def test_unknown_fields_are_ignored(http):
    r = http.post("/v1/chat/completions", json={**CHAT, "frobnicate": True, "response_format": None})
    assert r.status_code == 200, r.text


def test_unknown_route_is_an_openai_404(http):
    expect_error(http.get("/v1/nothing-here"), 404)


def test_request_id_is_kept_or_made(http):
    r = http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123" and r.json()["id"] == "chatcmpl-abc-123"
    assert len(http.get("/health").headers["x-request-id"]) == 32


def test_server_survives_100_bad_requests(http):
    for i in range(100):
        body, _ = BAD_CHAT[i % len(BAD_CHAT)]
        assert http.post("/v1/chat/completions", json=body).status_code == 400
    ok = http.post("/v1/chat/completions", json=CHAT)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None


def test_tokenize_and_detokenize_round_trip(http):
    t = http.post("/tokenize", json={"prompt": "Hello world"}).json()
    assert t["count"] == len(t["tokens"]) and t["max_model_len"] == 8192
    assert http.post("/detokenize", json={"tokens": t["tokens"]}).json()["prompt"] == "Hello world"
    expect_error(http.post("/detokenize", json={"tokens": [10**9]}), 400)
