"""Server-sent events: an incremental decoder and the reading of one OpenAI stream.

The decoder takes raw body bytes in whatever pieces the network delivers and
returns complete events; :class:`StreamState` folds OpenAI chunks (chat or
completions) into what the bench measures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DONE = b"[DONE]"
# Error text kept per request: enough to tell errors apart, small enough for results.json.
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class SseEvent:
    event: str | None  # the `event:` field, None for plain `data:` events
    data: bytes  # the `data:` lines joined by newlines


class SseDecoder:
    """Splits a text/event-stream body into events, across arbitrary chunk boundaries."""

    def __init__(self) -> None:
        self._partial_line = b""
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        lines = (self._partial_line + chunk).split(b"\n")
        self._partial_line = lines.pop()
        events: list[SseEvent] = []
        for line in lines:
            self._take_line(line[:-1] if line.endswith(b"\r") else line, events)
        return events

    def flush(self) -> list[SseEvent]:
        """End of body: dispatch a last event even if the server omitted its blank line."""
        events: list[SseEvent] = []
        if self._partial_line:
            self._take_line(self._partial_line.rstrip(b"\r"), events)
            self._partial_line = b""
        self._take_line(b"", events)
        return events

    def _take_line(self, line: bytes, events: list[SseEvent]) -> None:
        if not line:
            if self._data:
                events.append(SseEvent(self._event, b"\n".join(self._data)))
            self._event, self._data = None, []
        elif line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            self._event = line[6:].strip().decode("utf-8", "replace")
        # Comments (":...") and other fields (id, retry) carry nothing the bench needs.


def error_text(body: Any) -> str:
    """A short message from an OpenAI-style error body (dict, str or bytes)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return body.strip()[:MAX_ERROR_CHARS]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:MAX_ERROR_CHARS]
        return str(err)[:MAX_ERROR_CHARS]
    return str(body)[:MAX_ERROR_CHARS]


@dataclass
class StreamState:
    """What one OpenAI stream told us so far; fed event by event."""

    token_times_s: list[float] = field(default_factory=list)  # arrival of each non-empty content chunk
    last_event_s: float | None = None  # arrival of the last event of any kind
    saw_done: bool = False  # the `data: [DONE]` sentinel arrived
    saw_finish_reason: bool = False  # a choice carried a finish_reason
    prompt_tokens: int | None = None  # from the usage chunk, if the server sent one
    completion_tokens: int | None = None  # from the usage chunk, if the server sent one
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, if the server sent it
    error: str | None = None  # first error event or error body inside the stream

    @property
    def completed(self) -> bool:
        return self.saw_done or self.saw_finish_reason

    def take(self, event: SseEvent, now_s: float) -> None:
        self.last_event_s = now_s
        if event.data == DONE:
            self.saw_done = True
            return
        if event.event == "error":
            self._set_error(error_text(event.data))
            return
        try:
            chunk = json.loads(event.data)
        except ValueError:
            self._set_error(f"malformed SSE data: {event.data[:80]!r}")
            return
        if not isinstance(chunk, dict):
            self._set_error(f"unexpected SSE data: {event.data[:80]!r}")
            return
        if "error" in chunk:
            self._set_error(error_text(chunk))
            return
        self._take_chunk(chunk, now_s)

    def _take_chunk(self, chunk: dict[str, Any], now_s: float) -> None:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = usage.get("completion_tokens", self.completion_tokens)
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                self.cached_tokens = details["cached_tokens"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = choice.get("text") or delta.get("content") or delta.get("reasoning_content")
            if text:
                self.token_times_s.append(now_s)
            if choice.get("finish_reason"):
                self.saw_finish_reason = True

    def _set_error(self, message: str) -> None:
        if self.error is None:
            self.error = message or "error event in stream"
