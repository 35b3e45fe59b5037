"""Tool calls in generated text: their syntax, and an incremental parser into OpenAI's shapes.

A call is ``open + NAME + middle + ARGUMENTS + close``; parallel calls are joined by ``separator``:

- Hermes/Qwen: ``<tool_call>\\n{"name": "NAME", "arguments": {...}}\\n</tool_call>``
- Llama 3.1 JSON: ``{"name": "NAME", "parameters": {...}}`` (several joined by ``; ``)

Under ``auto``/``required``/named tool choices the grammar (server/tools.py) makes the model write
exactly these literals, so the parser matches them literally; the arguments are one JSON object,
delimited by counting braces outside strings. Text outside calls is content. One parser serves
streaming (``feed`` per delta) and whole responses (``feed`` once, then ``finish``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolSyntax:
    name: str
    open: str  # text before the function name
    middle: str  # between the name and the arguments
    close: str  # after the arguments
    separator: str  # between parallel calls
    trigger: str | None  # what starts a call inside free text (auto); None: a call is the whole output

    def format_call(self, name: str, arguments_json: str) -> str:
        return f"{self.open}{name}{self.middle}{arguments_json}{self.close}"


HERMES = ToolSyntax("hermes", '<tool_call>\n{"name": "', '", "arguments": ', "}\n</tool_call>", "\n", "<tool_call>")
LLAMA3_JSON = ToolSyntax("llama3_json", '{"name": "', '", "parameters": ', "}", "; ", None)


@dataclass
class ParsedCall:
    index: int
    id: str
    name: str
    arguments: str = ""


@dataclass
class Event:
    """One streamed piece: content text, a call's header (id and name), or an arguments fragment."""

    kind: str  # "content" | "call" | "arguments"
    text: str = ""
    call: ParsedCall | None = None


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class _Arguments:
    """Finds where one JSON value ends, fed piece by piece."""

    depth: int = 0
    started: bool = False
    in_string: bool = False
    escaped: bool = False

    def end_in(self, text: str) -> int | None:
        """Index just past the value's end within ``text``, or None if it goes on."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                continue
            if self.started and self.depth == 0 and (ch in ",}]" or ch.isspace()):
                return i  # a bare scalar ended (a grammar never asks for one; kept for robustness)
            if ch == '"':
                self.in_string = self.started = True
            elif ch in "{[":
                self.depth += 1
                self.started = True
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
            elif not ch.isspace():
                self.started = True
        return None


@dataclass
class ToolCallParser:
    """Splits generated text into content and tool calls, incrementally."""

    syntax: ToolSyntax
    calls: list[ParsedCall] = field(default_factory=list)
    content: str = ""
    _buffer: str = ""  # text not yet classified
    _state: str = "text"  # text | name | arguments | close
    _held_space: str = ""  # whitespace-only content, dropped if a call follows
    _args: _Arguments = field(default_factory=_Arguments)

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> list[Event]:
        """The end of the output: whatever is left is content (or an unfinished call's arguments)."""
        events: list[Event] = []
        rest, self._buffer = self._buffer, ""
        if self._state == "text":
            self._content(events, rest, final=True)
        elif self._state == "arguments" and rest:
            self._arguments(events, rest)
        elif self._state == "name":  # cut before the arguments began: give the text back as content
            self._content(events, self.syntax.open + rest, final=True)
        return events

    @property
    def call_count(self) -> int:
        return len(self.calls)

    def _step(self, events: list[Event]) -> bool:
        buf, s = self._buffer, self.syntax
        if self._state == "text":
            at = buf.find(s.open)
            if at < 0:
                keep = _partial_suffix(buf, s.open)
                self._content(events, buf[:len(buf) - keep])
                self._buffer = buf[len(buf) - keep:]
                return False
            self._content(events, buf[:at], before_call=True)
            self._buffer, self._state = buf[at + len(s.open):], "name"
            return True
        if self._state == "name":
            at = buf.find(s.middle)
            if at < 0:
                return False
            call = ParsedCall(len(self.calls), new_call_id(), buf[:at])
            self.calls.append(call)
            events.append(Event("call", call=call))
            self._buffer, self._state, self._args = buf[at + len(s.middle):], "arguments", _Arguments()
            return True
        if self._state == "arguments":
            end = self._args.end_in(buf)
            self._arguments(events, buf if end is None else buf[:end])
            if end is None:
                self._buffer = ""
                return False
            self._buffer, self._state = buf[end:], "close"
            return True
        stripped = buf.lstrip()
        close = s.close.lstrip()
        if len(stripped) < len(close):
            return False
        if stripped.startswith(close):
            self._buffer, self._state = stripped[len(close):].lstrip(s.separator.strip() or None), "text"
            return True
        self._buffer, self._state = stripped, "text"  # not a call after all: the rest is text
        return True

    def _arguments(self, events: list[Event], text: str) -> None:
        if not text:
            return
        call = self.calls[-1]
        if not call.arguments:
            text = text.lstrip()
        call.arguments += text
        if text:
            events.append(Event("arguments", text, call))

    def _content(self, events: list[Event], text: str, *, before_call: bool = False, final: bool = False) -> None:
        """Trailing whitespace is held back: around calls it is not content."""
        body = text.rstrip()
        if body:
            self._emit(events, self._held_space + body)
            self._held_space = ""
        self._held_space = "" if before_call else self._held_space + text[len(body):]
        if final and not self.calls:
            self._emit(events, self._held_space)
            self._held_space = ""

    def _emit(self, events: list[Event], text: str) -> None:
        if text:
            self.content += text
            events.append(Event("content", text))


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def parse_tool_calls(syntax: ToolSyntax, text: str) -> tuple[str | None, list[ParsedCall]]:
    """A whole output -> (content, calls); with calls, the content is stripped (None if empty)."""
    parser = ToolCallParser(syntax)
    parser.feed(text)
    parser.finish()
    if not parser.calls:
        return parser.content, []
    return parser.content.strip() or None, parser.calls


def openai_tool_calls(calls: list[ParsedCall]) -> list[dict[str, Any]]:
    """``message.tool_calls`` of a whole response."""
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def delta(event: Event) -> dict[str, Any]:
    """A stream chunk's ``delta`` for one event: the call's id and name first, then argument fragments."""
    if event.kind == "content":
        return {"content": event.text}
    call = event.call
    assert call is not None
    if event.kind == "call":
        return {"tool_calls": [{"index": call.index, "id": call.id, "type": "function",
                                "function": {"name": call.name, "arguments": ""}}]}
    return {"tool_calls": [{"index": call.index, "function": {"arguments": event.text}}]}
