"""A scripted OpenAI-compatible stub server: for the bench's own tests and capacity figure.

Each request behaves as the ``fake:{...}`` JSON directive in its text says (see
:func:`directive`), else as the server's default :class:`FakeBehaviour`: how
long before the first token, between tokens, how many tokens, which status, a
Retry-After header, an error event mid-stream, a cut connection, or a stream
that ends without ``[DONE]``. It also serves ``GET /v1/models``, ``POST /tokenize``
(one token per word or punctuation mark) and ``GET /ready``.

Run it alone with ``python -m servewise.bench.fake_server --port 8001``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from aiohttp import web

DIRECTIVE = re.compile(r"fake:(\{[^{}]*\})")
FAKE_TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")  # the stub tokenizer: words and punctuation marks


@dataclass(frozen=True)
class FakeBehaviour:
    """How the stub answers one request."""

    status: int = 200  # anything else: an OpenAI error body with this status
    retry_after: str | None = None  # Retry-After header of a non-200 answer
    ttft_s: float = 0.0  # delay from the headers (and role chunk) to the first token
    itl_s: float = 0.0  # delay between consecutive tokens
    num_tokens: int | None = None  # tokens streamed; None = the request's max_tokens (16 if absent)
    error_after_tokens: int | None = None  # after this many tokens: an SSE error event, then [DONE]
    drop_after_tokens: int | None = None  # after this many tokens: cut the connection
    omit_done: bool = False  # end the body cleanly without finish_reason, usage or [DONE]
    send_usage: bool = True  # answer stream_options.include_usage with a usage chunk


def directive(**fields: Any) -> str:
    """Text to put in a prompt so the stub answers it with these FakeBehaviour fields."""
    return "fake:" + json.dumps(fields, separators=(",", ":"))


def fake_token_count(text: str) -> int:
    return len(FAKE_TOKEN_PATTERN.findall(text))


def _request_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body["messages"])
    return str(body.get("prompt", ""))


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class _Chunks:
    """The pre-encoded SSE events of one streamed answer."""

    role: bytes | None
    token: bytes
    finish: bytes
    usage: bytes = b""
    done: bytes = b"data: [DONE]\n\n"
    error: bytes = b'event: error\ndata: {"error":{"message":"scripted stream error","type":"server_error"}}\n\n'


def _chunks(body: dict[str, Any], chat: bool, model: str, num_tokens: int, send_usage: bool) -> _Chunks:
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choice: dict[str, Any], usage: dict[str, int] | None = None) -> bytes:
        payload: dict[str, Any] = {"id": "fake", "object": kind, "created": 0, "model": model,
                                   "choices": [dict(choice, index=0)] if choice else []}
        if usage is not None:
            payload["usage"] = usage
        return _sse(payload)

    def content(text: str, finish: str | None = None) -> dict[str, Any]:
        if chat:
            return {"delta": {"content": text} if text else {}, "finish_reason": finish}
        return {"text": text, "finish_reason": finish}

    num_prompt = fake_token_count(_request_text(body))
    usage = {"prompt_tokens": num_prompt, "completion_tokens": num_tokens,
             "total_tokens": num_prompt + num_tokens}
    wants_usage = send_usage and bool((body.get("stream_options") or {}).get("include_usage"))
    return _Chunks(role=chunk({"delta": {"role": "assistant", "content": ""}, "finish_reason": None})
                   if chat else None,
                   token=chunk(content(" tok")), finish=chunk(content("", "length")),
                   usage=chunk({}, usage) if wants_usage else b"")


@dataclass
class FakeOpenAIServer:
    """The stub on 127.0.0.1; ``async with`` starts and stops it (port 0 = a free port)."""

    default: FakeBehaviour = field(default_factory=FakeBehaviour)
    model: str = "fake-model"
    port: int = 0
    max_model_len: int = 4096  # reported by /tokenize
    received: list[dict[str, Any]] = field(default_factory=list)  # request bodies, in arrival order
    received_auth: list[str | None] = field(default_factory=list)  # their Authorization headers
    record_bodies: bool = True  # off for capacity runs, where keeping bodies costs memory
    _runner: web.AppRunner | None = field(default=None, repr=False)

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    async def __aenter__(self) -> FakeOpenAIServer:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/health", self._ready)
        # Stopping cancels scripted sleeps (a request the client timed out on) instead of waiting.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def behaviour_for(self, body: dict[str, Any]) -> FakeBehaviour:
        match = DIRECTIVE.search(_request_text(body))
        return replace(self.default, **json.loads(match.group(1))) if match else self.default

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _ready(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _tokenize(self, request: web.Request) -> web.Response:
        count = fake_token_count(str((await request.json()).get("prompt", "")))
        return web.json_response({"tokens": list(range(count)), "count": count,
                                  "max_model_len": self.max_model_len})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await request.json()
        if self.record_bodies:
            self.received.append(body)
            self.received_auth.append(request.headers.get("Authorization"))
        behaviour = self.behaviour_for(body)
        if behaviour.status != 200:
            headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else None
            return web.json_response({"error": {"message": f"scripted {behaviour.status}", "type": "fake",
                                                "code": behaviour.status}},
                                     status=behaviour.status, headers=headers)
        num_tokens = behaviour.num_tokens if behaviour.num_tokens is not None else int(body.get("max_tokens", 16))
        chunks = _chunks(body, chat, self.model, num_tokens, behaviour.send_usage)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        if chunks.role:
            await response.write(chunks.role)
        await self._stream_tokens(request, response, behaviour, chunks, num_tokens)
        return response

    @staticmethod
    async def _stream_tokens(request: web.Request, response: web.StreamResponse, behaviour: FakeBehaviour,
                             chunks: _Chunks, num_tokens: int) -> None:
        if behaviour.ttft_s:
            await asyncio.sleep(behaviour.ttft_s)
        for i in range(num_tokens + 1):
            if i == behaviour.drop_after_tokens and request.transport is not None:
                request.transport.abort()
                return
            if i == behaviour.error_after_tokens:
                await response.write(chunks.error + chunks.done)
                await response.write_eof()
                return
            if i == num_tokens:
                break
            if i and behaviour.itl_s:
                await asyncio.sleep(behaviour.itl_s)
            await response.write(chunks.token)
        if not behaviour.omit_done:
            await response.write(chunks.finish + chunks.usage + chunks.done)
        await response.write_eof()


class FakeServerThread:
    """Runs a FakeOpenAIServer on its own event loop in a daemon thread (for blocking callers)."""

    def __init__(self, server: FakeOpenAIServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.__aenter__(), self._loop).result(timeout=10)
        return self.server

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.__aexit__(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


async def _serve_forever(server: FakeOpenAIServer) -> None:
    async with server:
        print(f"fake OpenAI server on {server.base_url} ({json.dumps(asdict(server.default))})", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servewise.bench.fake_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port (printed on start)")
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=None, help="tokens a request (default: its max_tokens)")
    args = parser.parse_args(argv)
    default = FakeBehaviour(ttft_s=args.ttft_ms / 1e3, itl_s=args.itl_ms / 1e3, num_tokens=args.tokens)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(FakeOpenAIServer(default, port=args.port, record_bodies=False)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
