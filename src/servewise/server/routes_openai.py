"""The OpenAI endpoints: chat completions, completions, models."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from servewise.engine.async_engine import AsyncEngine
from servewise.errors import InvalidRequestError, ModelNotFoundError, PayloadTooLargeError
from servewise.server.generation import Generation, full_response, stream_response
from servewise.server.protocol import ChatCompletionRequest, CompletionRequest
from servewise.server.request_log import log_finished
from servewise.server.slo_runtime import ANONYMOUS, Ticket, reserved_tokens
from servewise.server.state import ServerState
from servewise.server.validation import Body, ValidGeneration, parse_body, parse_chat, parse_completion
from servewise.slo import Outcome, RequestUsage, Tenant

router = APIRouter()


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.servewise
    return state


def request_tenant(request: Request) -> Tenant:
    tenant: Tenant = request.scope.get("state", {}).get("tenant", ANONYMOUS)
    return tenant


def request_id(request: Request) -> str:
    rid: str = request.scope["state"]["request_id"]
    return rid


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"the request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _endpoint(request, ChatCompletionRequest, parse_chat, "chat")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _endpoint(request, CompletionRequest, parse_completion, "completions")


async def _endpoint(request: Request, body_model: type[Body], parse: Callable[..., ValidGeneration],
                    endpoint: str) -> Response:
    arrival_s = time.monotonic()
    state = get_state(request)
    engine = state.require_engine()
    body = parse_body(body_model, await read_body(request, state.config.max_body_bytes))
    valid = parse(body, engine.tokenizer, engine.model_info.name, state.config)
    return await _generate(request, state, valid, arrival_s, endpoint)


async def _generate(request: Request, state: ServerState, valid: ValidGeneration, arrival_s: float,
                    endpoint: str) -> Response:
    engine = state.require_engine()
    for prompt in valid.prompts:  # 400 before anything is queued, limited or streamed
        engine.engine.validate_prompt(prompt, valid.params)
    if valid.params.grammar is not None:
        await _compile_grammar(state, engine, valid)
    tenant = request_tenant(request)
    slo_class = state.slo.classify(tenant, valid.priority or request.headers.get("x-slo-class"))
    lengths = [len(p) for p in valid.prompts]
    # Admission predicts prefill work: tokens the prefix cache already holds cost (almost) nothing.
    to_compute = sum(n - engine.engine.num_cached_prompt_tokens(p) for n, p in zip(lengths, valid.prompts, strict=True))
    ticket = state.slo.admit(tenant, slo_class, to_compute,
                             reserved_tokens(lengths, valid.params.n, valid.params.max_tokens,
                                             engine.model_info.max_model_len),
                             engine.stats, engine.num_in_flight)
    rid = request_id(request)
    internal = uuid.uuid4().hex
    gen = Generation(engine, valid, rid, arrival_s, [f"{internal}-{i}" for i in range(len(valid.prompts))],
                     priority=slo_class.priority,
                     deadline_s=arrival_s + slo_class.ttft_s if slo_class.ttft_s is not None else None,
                     on_first_token=lambda ttft_s: state.slo.first_token(ticket, ttft_s))
    formatter = state.formatter if valid.want_logprobs else None
    created = int(time.time())
    headers = {"X-Request-Id": rid}
    if valid.stream:
        async def body() -> Any:
            status = "ok"
            try:
                async for data in stream_response(gen, created, state.fingerprint, formatter):
                    yield data
            except BaseException:
                status = "disconnected"
                raise
            finally:
                _finished(state, gen, endpoint, status, ticket)

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})
    task = asyncio.create_task(full_response(gen, created, state.fingerprint, formatter))
    status = "error"
    try:
        result = await _until_disconnect(request, task)
        status = "ok" if result is not None else "disconnected"
    finally:
        _finished(state, gen, endpoint, status, ticket)
    if result is None:
        return Response(status_code=499)  # the client is gone; nobody reads this
    return JSONResponse(result, headers=headers)


async def _compile_grammar(state: ServerState, engine: AsyncEngine, valid: ValidGeneration) -> None:
    """Compile the output constraint now (in the compile pool, cached), so a bad or too complex one is a 400."""
    assert valid.params.grammar is not None
    try:
        result = await engine.compile_grammar(valid.params.grammar)
    except InvalidRequestError as exc:
        raise InvalidRequestError(exc.message, param=valid.grammar_param, code=exc.code) from None
    if state.metrics is not None:
        kind = "tools" if valid.tools is not None else valid.params.grammar.kind.value
        state.metrics.observe_grammar(kind, result.compiled.compile_s, result.cache_hit)


async def _until_disconnect(request: Request, task: asyncio.Task[dict[str, Any]]) -> dict[str, Any] | None:
    """Await the task; if the client disconnects first, cancel it (aborting its engine requests)."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.create_task(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def _finished(state: ServerState, gen: Generation, endpoint: str, status: str, ticket: Ticket) -> None:
    """Metrics, SLO attainment, usage, rate-limit settlement and the log line of a finished request."""
    results = gen.results
    timings = [r.timings for r in results if r.timings is not None]
    reasons = gen.engine_finish_reasons()
    if state.metrics is not None:
        for result in results:
            if result.timings is not None:
                state.metrics.observe_request(result.timings, [c.token_times_s for c in result.outputs])
        for reason in reasons:
            state.metrics.count_success(reason)
    failed = status == "error" or any(r in ("error", "drain") for r in reasons)
    outcome = Outcome.CLIENT_ERROR if status == "disconnected" else (
        Outcome.SERVER_ERROR if failed else Outcome.SUCCESS)
    usage = gen.usage()
    state.slo.finish(ticket, outcome, timings, gen.arrival_s, RequestUsage(
        prompt_tokens=usage.prompt_tokens, cached_prompt_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
        prefill_compute_s=sum(t.prefill_compute_s for t in timings),
        decode_compute_s=sum(t.decode_compute_s for t in timings)))
    if state.config.log_requests:
        log_finished(gen, endpoint, status, {"tenant": ticket.tenant.name, "slo_class": ticket.slo_class.name,
                                             "predicted_ttft_s": round(ticket.predicted_ttft_s, 6)})


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    state = get_state(request)
    engine = state.require_engine()
    return JSONResponse({"object": "list", "data": [_model_card(engine.model_info)]})


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> JSONResponse:
    engine = get_state(request).require_engine()
    if model_id != engine.model_info.name:
        raise ModelNotFoundError(f"the model {model_id!r} does not exist", param="model", code="model_not_found")
    return JSONResponse(_model_card(engine.model_info))


def _model_card(info: Any) -> dict[str, Any]:
    return {"id": info.name, "object": "model", "created": 0, "owned_by": "servewise",
            "max_model_len": info.max_model_len}
