"""OpenAI response bodies and stream chunks, built from engine outputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from servewise.server.tool_calls import ToolCallParser, ToolSyntax, openai_tool_calls, parse_tool_calls
from servewise.types import FinishReason, TokenLogprob

FINISH_REASONS = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length", FinishReason.ABORT: "abort",
                  FinishReason.DRAIN: "abort", FinishReason.ERROR: "error"}


class TokenBytes(Protocol):
    def token_bytes(self, token_id: int) -> bytes: ...


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n".encode()


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


class LogprobFormatter:
    """Token strings for logprobs (cached: the same few thousand tokens recur)."""

    def __init__(self, tokenizer: TokenBytes) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def token(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self._tokenizer.token_bytes(token_id)
            hit = (raw.decode("utf-8", errors="replace"), list(raw))
            if len(self._cache) < 65536:
                self._cache[token_id] = hit
        return hit

    def chat(self, logprobs: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
        out = []
        for lp in logprobs:
            text, raw = self.token(lp.token_id)
            top = []
            for token_id, value in lp.top:
                t, b = self.token(token_id)
                top.append({"token": t, "logprob": value, "bytes": b})
            out.append({"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top})
        return out

    def completion(self, logprobs: Sequence[TokenLogprob], text_offset: int) -> tuple[dict[str, Any], int]:
        """Legacy completions layout; returns it and the text offset after these tokens."""
        tokens, values, tops, offsets = [], [], [], []
        for lp in logprobs:
            text, _ = self.token(lp.token_id)
            tokens.append(text)
            values.append(lp.logprob)
            tops.append({self.token(t)[0]: v for t, v in lp.top})
            offsets.append(text_offset)
            text_offset += len(text)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}, text_offset


@dataclass
class ChoiceState:
    """Accumulated state of one choice (index = prompt index × n + completion index)."""

    index: int
    text: str = ""
    num_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    tool_parser: ToolCallParser | None = None  # streaming with tools: splits the text into content and calls


def finish_reason(reason: FinishReason | None, num_tool_calls: int) -> str | None:
    """OpenAI's spelling; a stop after tool calls is "tool_calls" (a cut one stays "length")."""
    if reason is None:
        return None
    return "tool_calls" if num_tool_calls and reason is FinishReason.STOP else FINISH_REASONS[reason]


def _chat_message(choice: ChoiceState, tools: ToolSyntax | None) -> tuple[dict[str, Any], int]:
    if tools is None:
        return {"role": "assistant", "content": choice.text}, 0
    content, calls = parse_tool_calls(tools, choice.text)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = openai_tool_calls(calls)
    return message, len(calls)


def chat_response(response_id: str, created: int, model: str, fingerprint: str, choices: Sequence[ChoiceState],
                  usage: Usage, formatter: LogprobFormatter | None, tools: ToolSyntax | None = None
                  ) -> dict[str, Any]:
    """tools: the syntax of tool calls to parse out of the text, when the request has tools."""
    out = []
    for c in choices:
        message, num_calls = _chat_message(c, tools)
        out.append({"index": c.index, "message": message,
                    "logprobs": {"content": formatter.chat(c.logprobs)} if formatter else None,
                    "finish_reason": finish_reason(c.finish_reason, num_calls)})
    return {"id": response_id, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": fingerprint, "choices": out, "usage": usage.as_dict()}


def completion_response(response_id: str, created: int, model: str, fingerprint: str,
                        choices: Sequence[ChoiceState], usage: Usage,
                        formatter: LogprobFormatter | None) -> dict[str, Any]:
    return {
        "id": response_id, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{
            "index": c.index, "text": c.text,
            "logprobs": formatter.completion(c.logprobs, 0)[0] if formatter else None,
            "finish_reason": FINISH_REASONS.get(c.finish_reason) if c.finish_reason else None,
        } for c in choices],
        "usage": usage.as_dict(),
    }


def error_body(message: str, openai_type: str, param: str | None = None, code: str | None = None
               ) -> dict[str, Any]:
    return {"error": {"message": message, "type": openai_type, "param": param, "code": code}}
