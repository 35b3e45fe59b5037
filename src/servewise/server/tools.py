"""OpenAI tools at the edge: definitions and ``tool_choice`` parsed, history checked, the prompt
rendered, and the grammar that makes a call always parse.

Prompt: a chat template that references ``tools`` renders them itself (and the assistant's
``tool_calls`` and ``tool`` messages of the history); its call syntax is Hermes/Qwen ``<tool_call>``
tags when the template mentions them, Llama 3.1 JSON for Llama 3 templates (``<|python_tag|>`` /
``<|start_header_id|>``), Hermes otherwise. A template without tools (the embedded SmolLM2's) gets
the tools in the system prompt (``TOOLS_PROMPT``, Hermes syntax); past calls are written into the
assistant's text and tool results become user turns wrapped in ``<tool_response>`` tags.

Grammar (an xgrammar structural tag): ``required`` = one or more calls to any tool (one unless
``parallel_tool_calls``), a named choice = calls to that tool, ``auto`` = free text in which a call may
start at the syntax's trigger (or, with ``response_format``, that format or calls). Each call's
arguments follow the function's ``parameters`` schema. ``none`` = no grammar, tools left out of the
prompt, so the model answers in text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from servewise.errors import InvalidRequestError
from servewise.server.protocol import NamedToolChoice, Tool
from servewise.server.structured import canonical_json
from servewise.server.tool_calls import HERMES, LLAMA3_JSON, ToolSyntax
from servewise.types import GrammarKind, GrammarSpec

MAX_TOOLS = 128
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MENTIONS_TOOLS = re.compile(r"\btools\b")
TOOLS_PROMPT = """# Tools

You may call one or more functions to assist with the user query. The functions are described in \
JSON within <tools></tools> tags:
<tools>
{tools}
</tools>

To call a function, answer with a JSON object with its name and arguments within \
<tool_call></tool_call> tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str | None
    parameters: str  # canonical JSON schema of the arguments object

    def as_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = json.loads(self.parameters)
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolPlan:
    """What the request asked of its tools, parsed; ``choice`` is auto, required or named."""

    tools: tuple[FunctionTool, ...]
    choice: str
    named: str | None  # the function a named choice forces
    parallel: bool  # several calls allowed in one answer
    syntax: ToolSyntax
    template_renders_tools: bool

    def grammar(self, text_format: GrammarSpec | None) -> GrammarSpec:
        tags = [_call_tag(t, self.syntax) for t in self.tools if self.named in (None, t.name)]
        calls = {"type": "tags_with_separator", "tags": tags, "separator": self.syntax.separator,
                 "at_least_one": True, "stop_after_first": not self.parallel}
        fmt: dict[str, Any] = calls
        if self.choice == "auto" and text_format is not None:
            fmt = {"type": "or", "elements": [_as_format(text_format), calls]}
        elif self.choice == "auto" and self.syntax.trigger is not None:
            fmt = {"type": "triggered_tags", "triggers": [self.syntax.trigger], "tags": tags,
                   "at_least_one": False, "stop_after_first": not self.parallel}
        elif self.choice == "auto":
            fmt = {"type": "or", "elements": [calls, {"type": "any_text"}]}
        return GrammarSpec(GrammarKind.STRUCTURAL_TAG, canonical_json({"type": "structural_tag", "format": fmt}))


def _call_tag(tool: FunctionTool, syntax: ToolSyntax) -> dict[str, Any]:
    return {"type": "tag", "begin": f"{syntax.open}{tool.name}{syntax.middle}",
            "content": {"type": "json_schema", "json_schema": json.loads(tool.parameters)}, "end": syntax.close}


def _as_format(spec: GrammarSpec) -> dict[str, Any]:
    """A response_format spec as a structural-tag format (the text alternative under auto)."""
    if spec.kind is GrammarKind.JSON_SCHEMA:
        return {"type": "json_schema", "json_schema": json.loads(spec.source)}
    if spec.kind is GrammarKind.JSON_OBJECT:
        return {"type": "json_schema", "json_schema": {"type": "object"}}
    if spec.kind is GrammarKind.REGEX:
        return {"type": "regex", "pattern": spec.source}
    if spec.kind is GrammarKind.CHOICE:
        return {"type": "or", "elements": [{"type": "const_string", "value": c} for c in json.loads(spec.source)]}
    if spec.kind is GrammarKind.EBNF:
        return {"type": "grammar", "grammar": spec.source}
    return dict(json.loads(spec.source)["format"])


def template_syntax(template: str | None) -> tuple[ToolSyntax, bool]:
    """(call syntax, whether the template renders tools itself)."""
    if template is None or not _MENTIONS_TOOLS.search(template):
        return HERMES, False
    if "<tool_call>" in template:
        return HERMES, True
    if "<|python_tag|>" in template or "<|start_header_id|>" in template:
        return LLAMA3_JSON, True
    return HERMES, True


def parse_tools(tools: Sequence[Tool] | None, tool_choice: str | NamedToolChoice | None,
                parallel: bool | None, template: str | None, max_bytes: int) -> ToolPlan | None:
    """The request's tool plan, or None when no tool may be called (no tools, or tool_choice none)."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise InvalidRequestError("tool_choice needs tools", param="tool_choice")
        return None
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(f"at most {MAX_TOOLS} tools are allowed", param="tools")
    functions = tuple(_function(t, i) for i, t in enumerate(tools))
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tool function names must be unique", param="tools")
    size = sum(len(f.parameters.encode()) for f in functions)
    if size > max_bytes:
        raise InvalidRequestError(f"the tools' parameter schemas are {size} bytes; the limit is {max_bytes}",
                                  param="tools", code="grammar_too_large")
    choice, named = _choice(tool_choice, names)
    if choice == "none":
        return None
    syntax, own = template_syntax(template)
    return ToolPlan(functions, choice, named, True if parallel is None else parallel, syntax, own)


def _function(tool: Tool, index: int) -> FunctionTool:
    where = f"tools.{index}"
    if tool.type != "function":
        raise InvalidRequestError(f"{where}.type must be 'function', got {tool.type!r}", param="tools")
    fn = tool.function
    if not _NAME.match(fn.name):
        raise InvalidRequestError(f"{where}.function.name must be 1-64 letters, digits, '_' or '-'; got {fn.name!r}",
                                  param="tools")
    parameters = fn.parameters if fn.parameters is not None else {"type": "object", "properties": {}}
    if parameters.get("type", "object") != "object":
        raise InvalidRequestError(f"{where}.function.parameters must be a JSON schema of type object",
                                  param="tools")
    return FunctionTool(fn.name, fn.description, canonical_json(parameters))


def _choice(tool_choice: str | NamedToolChoice | None, names: list[str]) -> tuple[str, str | None]:
    if tool_choice is None:
        return "auto", None
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise InvalidRequestError(f"tool_choice must be none, auto, required or a named function; "
                                      f"got {tool_choice!r}", param="tool_choice")
        return tool_choice, None
    if tool_choice.type != "function":
        raise InvalidRequestError(f"tool_choice.type must be 'function', got {tool_choice.type!r}", param="tool_choice")
    if tool_choice.function.name not in names:
        raise InvalidRequestError(f"tool_choice names {tool_choice.function.name!r}, which is not in tools "
                                  f"({', '.join(names)})", param="tool_choice")
    return "named", tool_choice.function.name
