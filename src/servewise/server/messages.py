"""Chat messages -> the dicts a chat template renders, tool history included (see server/tools.py).

History rules, as OpenAI: an assistant message may carry ``tool_calls`` (arguments are JSON text); a
``tool`` message answers one of them by ``tool_call_id``; a tool message that answers no earlier call
is refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from servewise.errors import InvalidRequestError
from servewise.server.protocol import ChatMessage, ToolCall
from servewise.server.tool_calls import HERMES
from servewise.server.tools import TOOLS_PROMPT, ToolPlan


def message_text(message: ChatMessage, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise InvalidRequestError(f"messages.{index}.content: only text parts are supported, got {part.type!r}",
                                      param="messages")
        texts.append(part.text)
    return "\n".join(texts)


def conversation(messages: Sequence[ChatMessage], plan: ToolPlan | None, template_renders_tools: bool
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(messages for the template, extra template variables: ``tools`` when it renders them)."""
    calls: dict[str, str] = {}  # tool_call_id -> function name, from the assistant turns so far
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        text = message_text(m, i)
        if m.role == "tool":
            out.append(_tool_result(m, text, i, calls, template_renders_tools))
            continue
        if m.tool_calls and m.role != "assistant":
            raise InvalidRequestError(f"messages.{i}: only assistant messages may carry tool_calls", param="messages")
        entry: dict[str, Any] = {"role": m.role, "content": text, **({"name": m.name} if m.name else {})}
        if m.tool_calls:
            parsed = [_history_call(c, i) for c in m.tool_calls]
            calls.update((c.id, c.function.name) for c in m.tool_calls)
            if template_renders_tools:
                entry["tool_calls"] = parsed
            else:
                written = "\n".join(HERMES.format_call(c["function"]["name"], json.dumps(c["function"]["arguments"],
                                                                                       ensure_ascii=False))
                                    for c in parsed)
                entry["content"] = f"{text}\n{written}" if text else written
        out.append(entry)
    if plan is None:
        return out, {}
    if template_renders_tools:
        return out, {"tools": [t.as_openai() for t in plan.tools]}
    return _with_tools_prompt(out, plan), {}


def _history_call(call: ToolCall, index: int) -> dict[str, Any]:
    if call.type != "function":
        raise InvalidRequestError(f"messages.{index}.tool_calls: type must be 'function'", param="messages")
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except ValueError:
        raise InvalidRequestError(f"messages.{index}.tool_calls: the arguments of {call.function.name!r} are not "
                                  "valid JSON", param="messages") from None
    # Templates format the arguments themselves (most with tojson): give them the object.
    return {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}


def _tool_result(m: ChatMessage, text: str, index: int, calls: dict[str, str],
                 template_renders_tools: bool) -> dict[str, Any]:
    if m.tool_call_id is None:
        raise InvalidRequestError(f"messages.{index}: a tool message needs tool_call_id", param="messages")
    name = calls.get(m.tool_call_id)
    if name is None:
        raise InvalidRequestError(f"messages.{index}: tool_call_id {m.tool_call_id!r} answers no earlier "
                                  "assistant tool call", param="messages")
    if template_renders_tools:
        return {"role": "tool", "content": text, "tool_call_id": m.tool_call_id, "name": name}
    return {"role": "user", "content": f"<tool_response>\n{json.dumps({'name': name, 'content': text}, ensure_ascii=False)}"
                                       "\n</tool_response>"}


def _with_tools_prompt(messages: list[dict[str, Any]], plan: ToolPlan) -> list[dict[str, Any]]:
    listing = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in plan.tools)
    prompt = TOOLS_PROMPT.format(tools=listing)
    if messages and messages[0]["role"] in ("system", "developer"):
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{prompt}" if first["content"] else prompt}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]
