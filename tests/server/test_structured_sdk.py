"""Structured outputs and tool calls through the official OpenAI SDK, against the live embedded model.

Schemas bound every free string and number: the 135M model otherwise repeats a digit or a word until
max_tokens cuts the JSON (see tests/schema_corpus.py).
"""

from __future__ import annotations

import json
import threading

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.schema_corpus import MAX_OUTPUT_TOKENS, SCHEMAS
from tests.server.conftest import metric_value

pytestmark = pytest.mark.slow

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 20}}, "required": ["timezone"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone",
                                           "parameters": TIME}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PARAMS = {"get_weather": WEATHER, "get_time": TIME}


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)
    population: int = Field(ge=0, le=50_000_000)


def test_parse_with_a_pydantic_model(client, model):
    r = client.chat.completions.parse(model=model, messages=[{"role": "user", "content": "Describe Paris."}],
                                      response_format=City, max_tokens=80, temperature=0)
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and city.name and r.choices[0].finish_reason == "stop"


def test_json_object(client, model):
    r = client.chat.completions.create(model=model, max_tokens=120, temperature=0, response_format={
        "type": "json_object"}, messages=[{"role": "user", "content": "Give a JSON object with a key 'ok'."}])
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_json_schema_streaming_matches_non_streaming(client, model):
    desc, schema = SCHEMAS[23]
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": schema, "strict": True}}
    kw = {"model": model, "messages": [{"role": "user", "content": f"Give {desc} as JSON."}], "temperature": 0,
          "max_tokens": MAX_OUTPUT_TOKENS, "response_format": fmt}
    full = client.chat.completions.create(**kw)
    jsonschema.validate(json.loads(full.choices[0].message.content), schema)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_completions_take_guided_regex(client, model):
    r = client.completions.create(model=model, prompt="My phone number is", max_tokens=20, temperature=0,
                                  extra_body={"guided_regex": r" [0-9]{3}-[0-9]{4}"})
    assert r.choices[0].text[0] == " " and len(r.choices[0].text) == 9 and r.choices[0].finish_reason == "stop"


def check_calls(message, names):
    assert message.tool_calls and all(c.type == "function" and c.id.startswith("call_") for c in message.tool_calls)
    for call in message.tool_calls:
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_required_and_named_tool_choices_always_call(client, model, choice):
    r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=80,
                                       temperature=0, parallel_tool_calls=False)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
    check_calls(c.message, ["get_time"] if isinstance(choice, dict) else PARAMS)


def test_auto_and_none_tool_choices(client, model):
    auto = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="auto",
                                          max_tokens=24, temperature=0, parallel_tool_calls=False).choices[0]
    if auto.message.tool_calls:
        check_calls(auto.message, PARAMS)
        assert auto.finish_reason == "tool_calls"
    else:
        assert auto.message.content and auto.finish_reason in ("stop", "length")
    none = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="none",
                                          max_tokens=20, temperature=0).choices[0]
    assert none.message.tool_calls is None and none.message.content and none.finish_reason != "tool_calls"


def test_streamed_tool_calls_are_reassembled_by_the_sdk(client, model):
    kw = {"model": model, "messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": 80,
          "temperature": 0, "parallel_tool_calls": False}
    full = client.chat.completions.create(**kw).choices[0].message.tool_calls
    with client.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in final.message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in full]


def test_a_full_tool_round_trip(client, model):
    first = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                           max_tokens=80, temperature=0, parallel_tool_calls=False)
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21})}]
    answer = client.chat.completions.create(model=model, messages=history, tools=TOOLS, tool_choice="none",
                                            max_tokens=16, temperature=0).choices[0]
    assert answer.message.content and answer.message.tool_calls is None


BAD_BODIES = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
     "Unsupported type"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in tools"),
    ({"messages": [{"role": "tool", "tool_call_id": "call_x", "content": "1"}]}, "answers no earlier"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "name"),
    ({"guided_json": {"type": "object", "description": "x" * 9000}}, "limit is 8192"),
    ({"guided_json": {"type": "array", "uniqueItems": True}}, "uniqueItems"),
    ({"guided_regex": "[a-"}, "regex"),
]


def test_bad_inputs_get_400_and_the_server_keeps_serving(live_server):
    for extra, message in BAD_BODIES:
        body = {"messages": ASK, "max_tokens": 4, **extra}
        r = httpx.post(live_server.v1 + "/chat/completions", json=body, timeout=60)
        assert r.status_code == 400, (extra, r.text)
        error = r.json()["error"]
        assert message in error["message"] and error["type"] == "invalid_request_error", error
    ok = httpx.post(live_server.v1 + "/chat/completions", timeout=60, json={
        "messages": ASK, "max_tokens": 8, "guided_choice": ["yes", "no"]})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] in ("yes", "no")


def test_grammar_metrics(live_server, client, model):
    client.chat.completions.create(model=model, messages=ASK, max_tokens=8, extra_body={"guided_choice": ["a", "b"]})
    text = httpx.get(live_server.base_url + "/metrics").text
    assert metric_value(text, "servewise:constrained_requests_total", kind="choice") >= 1
    assert metric_value(text, "servewise:constrained_requests_total", kind="tools") >= 1
    assert metric_value(text, "servewise:grammar_compile_time_seconds_count") >= 1
    assert metric_value(text, "servewise:grammar_cache_hits_total") >= 1


def test_a_mixed_batch_of_16(client, model):
    """8 schemas and 8 free prompts at once: each schema's output validates; the free ones equal their solo runs."""
    free = [f"Write one sentence about the number {i}." for i in range(8)]
    client = client.with_options(max_retries=8)  # admission may shed a burst of 16 (429 + Retry-After)

    def unconstrained(text):
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                              max_tokens=24, temperature=0).choices[0].message.content

    solo = [unconstrained(t) for t in free]
    picked = SCHEMAS[::7][:8]
    results: dict[str, str] = {}

    def constrained(k, desc, schema):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Give {desc} as JSON."}], temperature=0.8, seed=k,
            max_tokens=MAX_OUTPUT_TOKENS, response_format={"type": "json_schema",
                                                          "json_schema": {"name": f"s{k}", "schema": schema}})
        results[f"s{k}"] = r.choices[0].message.content

    def free_run(k, text):
        results[f"f{k}"] = unconstrained(text)

    threads = [threading.Thread(target=constrained, args=(k, d, s)) for k, (d, s) in enumerate(picked)]
    threads += [threading.Thread(target=free_run, args=(k, t)) for k, t in enumerate(free)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, (_, schema) in enumerate(picked):
        jsonschema.validate(json.loads(results[f"s{k}"]), schema)
    assert [results[f"f{k}"] for k in range(8)] == solo
