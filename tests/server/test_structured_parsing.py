"""Structured-output and tool fields parsed at the edge, and tool calls parsed out of text (no model)."""

from __future__ import annotations

import json
import random

import pytest

from servewise.errors import InvalidRequestError
from servewise.server.messages import conversation
from servewise.server.protocol import ChatCompletionRequest
from servewise.server.structured import parse_grammar
from servewise.server.tool_calls import HERMES, LLAMA3_JSON, ToolCallParser, parse_tool_calls
from servewise.server.tools import parse_tools, template_syntax
from servewise.types import GrammarKind

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def chat(**fields) -> ChatCompletionRequest:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate_json(json.dumps(body))


def grammar(**fields):
    return parse_grammar(chat(**fields), 10_000)


@pytest.mark.parametrize(("fields", "kind", "source"), [
    ({"response_format": {"type": "json_object"}}, GrammarKind.JSON_OBJECT, ""),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"b": 1, "a": 2}}}},
     GrammarKind.JSON_SCHEMA, '{"b":1,"a":2}'),
    ({"guided_json": '{"type": "integer"}'}, GrammarKind.JSON_SCHEMA, '{"type":"integer"}'),
    ({"guided_regex": "[0-9]+"}, GrammarKind.REGEX, "[0-9]+"),
    ({"guided_choice": ["a", "b", "a"]}, GrammarKind.CHOICE, '["a","b"]'),
    ({"guided_grammar": 'root ::= "x"'}, GrammarKind.EBNF, 'root ::= "x"'),
    ({"structured_outputs": {"json": {"type": "integer"}}}, GrammarKind.JSON_SCHEMA, '{"type":"integer"}'),
    ({"structured_outputs": {"choice": ["y"]}}, GrammarKind.CHOICE, '["y"]'),
])
def test_each_way_to_ask_becomes_one_canonical_spec(fields, kind, source):
    spec, param = grammar(**fields)
    assert spec is not None and (spec.kind, spec.source) == (kind, source)
    assert param == next(iter(fields))


def test_text_format_is_no_constraint():
    assert grammar(response_format={"type": "text"}) == (None, None)


@pytest.mark.parametrize(("fields", "message"), [
    ({"response_format": {"type": "xml"}}, "response_format.type must be one of"),
    ({"response_format": {"type": "json_schema"}}, "json_schema.schema is required"),
    ({"guided_json": "{not json"}, "not valid JSON"),
    ({"guided_json": "[1, 2]"}, "must be a JSON schema object"),
    ({"guided_choice": []}, "non-empty strings"),
    ({"guided_regex": " "}, "must not be empty"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "at most one output constraint"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "exactly one"),
    ({"guided_json": {"type": "string", "description": "x" * 20_000}}, "the limit is 10000"),
])
def test_bad_constraints_are_400s_naming_the_parameter(fields, message):
    with pytest.raises(InvalidRequestError, match=message) as info:
        grammar(**fields)
    assert info.value.param == next(iter(fields)) or "at most one" in message


def plan(tool_choice=None, tools=(TOOL,), template=None, parallel=None):
    req = chat(tools=list(tools), **({"tool_choice": tool_choice} if tool_choice is not None else {}))
    return parse_tools(req.tools, req.tool_choice, parallel, template, 10_000)


def test_tool_choices():
    assert plan().choice == "auto" and plan("required").choice == "required"
    assert plan("none") is None
    named = plan({"type": "function", "function": {"name": "get_weather"}})
    assert (named.choice, named.named) == ("named", "get_weather")
    grammar_json = json.loads(named.grammar(None).source)
    assert grammar_json["format"]["at_least_one"] is True
    assert grammar_json["format"]["tags"][0]["begin"] == '<tool_call>\n{"name": "get_weather", "arguments": '


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in tools"),
    ({"tool_choice": "sometimes"}, "tool_choice must be"),
    ({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}, "type must be 'function'"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "function.name must be"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "type object"),
    ({"tools": [TOOL, TOOL]}, "unique"),
])
def test_bad_tools_are_400s(kwargs, message):
    with pytest.raises(InvalidRequestError, match=message):
        plan(**kwargs)


def test_tool_choice_without_tools_is_refused():
    with pytest.raises(InvalidRequestError, match="needs tools"):
        parse_tools(None, "required", None, None, 10_000)


def test_template_detection():
    assert template_syntax(None) == (HERMES, False)
    assert template_syntax("{{ messages }}") == (HERMES, False)
    assert template_syntax("{% if tools %}<tool_call>{% endif %}") == (HERMES, True)
    assert template_syntax("{% if tools %}<|start_header_id|>ipython{% endif %}") == (LLAMA3_JSON, True)


HISTORY = [
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
]


def test_tool_history_without_template_support_is_written_as_text_with_a_tools_prompt():
    req = chat(messages=HISTORY, tools=[TOOL])
    messages, extra = conversation(req.messages, plan(), template_renders_tools=False)
    assert extra == {} and messages[0]["role"] == "system" and "<tools>" in messages[0]["content"]
    assert messages[2]["content"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert messages[3]["role"] == "user" and "<tool_response>" in messages[3]["content"]


def test_tool_history_with_template_support_is_passed_through():
    req = chat(messages=HISTORY, tools=[TOOL])
    messages, extra = conversation(req.messages, plan(template="{{ tools }}<tool_call>"), template_renders_tools=True)
    assert extra["tools"][0]["function"]["name"] == "get_weather"
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert messages[2] == {"role": "tool", "content": "21 C", "tool_call_id": "call_1", "name": "get_weather"}


@pytest.mark.parametrize(("history", "message"), [
    ([{"role": "tool", "tool_call_id": "call_9", "content": "x"}], "answers no earlier"),
    ([{"role": "tool", "content": "x"}], "needs tool_call_id"),
    ([{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}],
     "not valid JSON"),
])
def test_bad_tool_history_is_refused(history, message):
    with pytest.raises(InvalidRequestError, match=message):
        conversation(chat(messages=history).messages, None, False)


CALLS_TEXT = ('Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa}ris\\"", "n": [1, {"a": 2}]}}\n'
              '</tool_call>\n<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>')


def test_whole_output_parsing():
    content, calls = parse_tool_calls(HERMES, CALLS_TEXT)
    assert content == "Sure." and [c.name for c in calls] == ["get_weather", "b"]
    assert json.loads(calls[0].arguments) == {"city": 'Pa}ris"', "n": [1, {"a": 2}]}
    assert parse_tool_calls(HERMES, "no calls <tool here\n") == ("no calls <tool here\n", [])
    _, llama = parse_tool_calls(LLAMA3_JSON, '{"name": "f", "parameters": {"x": 1}}; {"name": "g", "parameters": {}}')
    assert [(c.name, c.arguments) for c in llama] == [("f", '{"x": 1}'), ("g", "{}")]


def test_streaming_in_any_pieces_gives_the_same_calls_and_content():
    rng = random.Random(0)
    for _ in range(100):
        parser, events, i = ToolCallParser(HERMES), [], 0
        while i < len(CALLS_TEXT):
            j = i + rng.randint(1, 6)
            events += parser.feed(CALLS_TEXT[i:j])
            i = j
        events += parser.finish()
        assert "".join(e.text for e in events if e.kind == "content") == "Sure."
        headers = [e for e in events if e.kind == "call"]
        assert [e.call.name for e in headers] == ["get_weather", "b"]
        args = ["".join(e.text for e in events if e.kind == "arguments" and e.call.index == k) for k in (0, 1)]
        assert [json.loads(a) for a in args] == [{"city": 'Pa}ris"', "n": [1, {"a": 2}]}, {}]
        assert events.index(headers[0]) < min(k for k, e in enumerate(events) if e.kind == "arguments")
