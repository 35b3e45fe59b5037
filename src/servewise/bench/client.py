"""The HTTP side of the bench: one aiohttp session talking to any OpenAI-compatible server.

aiohttp rather than httpx: on the project's 2-core machine it streams several
times more requests per second from one process
(``benchmarks/bench_client_capacity.py`` measures both). Request bodies are
serialized before the clock starts, and the stream is read in raw network
pieces, so the hot path is one JSON parse per SSE event.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from servewise.bench.records import Outcome, RequestRecord, outcome_for_status
from servewise.bench.sse import SseDecoder, StreamState, error_text

# GET /models and POST /tokenize happen before the clock starts; a stuck server fails fast.
SETUP_TIMEOUT_S = 30.0

Message = tuple[str, str]  # (role, content)


class BenchSetupError(Exception):
    """The target cannot be benchmarked as configured (unreachable, no model, no /tokenize)."""


class Endpoint(str, enum.Enum):
    CHAT = "chat"  # POST {base}/chat/completions with messages
    COMPLETIONS = "completions"  # POST {base}/completions with a prompt

    @property
    def path(self) -> str:
        return "/chat/completions" if self is Endpoint.CHAT else "/completions"


@dataclass(frozen=True)
class TargetConfig:
    """Where to send requests and how to shape their bodies."""

    base_url: str = "http://127.0.0.1:8000/v1"  # OpenAI API root: the part before /chat/completions
    endpoint: Endpoint = Endpoint.CHAT
    model: str | None = None  # None = the first id listed by GET {base_url}/models
    api_key: str | None = None  # sent as a Bearer token; never written to results
    request_timeout_s: float = 600.0  # whole request, stream included
    # Send `ignore_eos: true` so outputs reach max_tokens; off by default because some
    # OpenAI-compatible servers reject unknown fields.
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base URL must start with http:// or https://, got {self.base_url!r}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        object.__setattr__(self, "endpoint", Endpoint(self.endpoint))
        if not self.request_timeout_s > 0:
            raise ValueError("request timeout must be positive")

    @property
    def server_root(self) -> str:
        """The server's root URL (where /tokenize lives): the base URL without its /v1."""
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url


def build_body(messages: Sequence[Message], max_tokens: int, model: str, target: TargetConfig) -> bytes:
    """The JSON body of one streamed request.

    A conversation sent to the completions endpoint becomes its contents joined by blank
    lines, so a shared system prompt stays a shared text prefix.
    """
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": True,
                            "stream_options": {"include_usage": True}}
    if target.endpoint is Endpoint.CHAT:
        body["messages"] = [{"role": role, "content": content} for role, content in messages]
    else:
        body["prompt"] = "\n\n".join(content for _, content in messages)
    if target.ignore_eos:
        body["ignore_eos"] = True
    return json.dumps(body).encode()


class BenchClient:
    """One pooled keep-alive session for a whole run; use as an async context manager."""

    def __init__(self, target: TargetConfig, *, max_connections: int | None = None) -> None:
        self.target = target
        self._max_connections = max_connections  # None = unlimited
        self._url = target.base_url + target.endpoint.path
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BenchClient:
        connector = aiohttp.TCPConnector(limit=self._max_connections or 0, limit_per_host=0,
                                         ttl_dns_cache=None, keepalive_timeout=60)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                   # A compressing server would buffer the stream and hide token timing.
                   "Accept-Encoding": "identity"}
        if self.target.api_key:
            headers["Authorization"] = f"Bearer {self.target.api_key}"
        self._session = aiohttp.ClientSession(
            connector=connector, headers=headers, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=self.target.request_timeout_s))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("BenchClient is used outside its `async with` block")
        return self._session

    async def list_models(self) -> list[str]:
        url = self.target.base_url + "/models"
        body = await self._setup_call("GET", url, None)
        return [str(m["id"]) for m in body.get("data", []) if isinstance(m, dict) and "id" in m]

    async def tokenize(self, model: str, text: str) -> tuple[int, int | None]:
        """(token count, the server's max_model_len or None) from POST {root}/tokenize."""
        body = await self._setup_call("POST", self.target.server_root + "/tokenize",
                                      {"model": model, "prompt": text})
        count = body.get("count")
        if count is None:
            count = len(body.get("tokens", ()))
        return int(count), body.get("max_model_len")

    async def _setup_call(self, method: str, url: str, payload: dict[str, Any] | None) -> dict[str, Any]:
        try:
            async with self.session.request(method, url, json=payload,
                                            timeout=aiohttp.ClientTimeout(total=SETUP_TIMEOUT_S)) as resp:
                if resp.status != 200:
                    raise BenchSetupError(f"{method} {url} answered {resp.status}: {error_text(await resp.read())}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise BenchSetupError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(body, dict):
            raise BenchSetupError(f"{method} {url} answered with non-object JSON")
        return body

    async def send(self, body: bytes, record: RequestRecord, origin_s: float) -> RequestRecord:
        """Send one streamed request and fill ``record`` with what happened.

        ``origin_s`` is the point's start on the perf_counter clock. Never raises for
        anything the server or the network does: that becomes the record's outcome.
        """
        start_s = time.perf_counter()
        record.send_s = start_s - origin_s
        try:
            async with self.session.post(self._url, data=body) as resp:
                record.http_status = resp.status
                if resp.status == 200:
                    await self._read_stream(resp, record, start_s)
                else:
                    record.outcome = outcome_for_status(resp.status)
                    record.retry_after = resp.headers.get("Retry-After")
                    record.error = f"HTTP {resp.status}: {error_text(await resp.read())}"
                    record.e2e_s = time.perf_counter() - start_s
        except asyncio.TimeoutError:
            self._fail(record, Outcome.TIMEOUT, f"no complete answer within {self.target.request_timeout_s:g}s",
                       start_s)
        except (aiohttp.ClientError, OSError) as exc:
            self._fail(record, Outcome.CONNECTION_ERROR, f"{type(exc).__name__}: {exc}", start_s)
        return record

    @staticmethod
    def _fail(record: RequestRecord, outcome: Outcome, error: str, start_s: float) -> None:
        record.outcome = outcome
        record.error = error[:300]
        record.e2e_s = time.perf_counter() - start_s

    @staticmethod
    async def _read_stream(resp: aiohttp.ClientResponse, record: RequestRecord, start_s: float) -> None:
        # The state appends to the record's own list, so a stream cut halfway keeps its tokens.
        state = StreamState(token_times_s=record.token_times_s)
        decoder = SseDecoder()
        try:
            async for piece in resp.content.iter_any():
                now_s = time.perf_counter() - start_s
                for event in decoder.feed(piece):
                    state.take(event, now_s)
            now_s = time.perf_counter() - start_s
            for event in decoder.flush():
                state.take(event, now_s)
        finally:
            _apply_counts(record, state)
        if state.error is not None:
            record.outcome, record.error = Outcome.STREAM_ERROR, state.error
        elif not state.completed:
            kind = resp.headers.get("Content-Type", "")
            note = "" if "event-stream" in kind else f" (Content-Type {kind or 'missing'}, not an SSE stream)"
            record.outcome, record.error = Outcome.INCOMPLETE, f"stream ended without [DONE] or finish_reason{note}"
        else:
            record.outcome = Outcome.OK
        record.e2e_s = state.last_event_s if state.last_event_s is not None else time.perf_counter() - start_s


def _apply_counts(record: RequestRecord, state: StreamState) -> None:
    record.ttft_s = state.token_times_s[0] if state.token_times_s else None
    if state.completion_tokens is not None:
        record.num_output_tokens = int(state.completion_tokens)
        record.usage_reported = True
    else:
        record.num_output_tokens = len(state.token_times_s)
    if state.prompt_tokens is not None:
        record.num_input_tokens = int(state.prompt_tokens)
    record.num_cached_tokens = state.cached_tokens
