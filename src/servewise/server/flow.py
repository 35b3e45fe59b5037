"""One chat or completions request, from its validated body to its last byte.

The route calls ``run_generation`` once: check the prompts against the model, pick the SLO
class, the tenant's limits and the backend's admission (429 before anything is queued),
run the prompts on the backend, answer (JSON or SSE), and settle metrics, attainment, usage
and the log line however the request ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from servewise.errors import InvalidRequestError, OverloadedError
from servewise.server.backend import Backend, CallContext
from servewise.server.generation import Generation, full_response, stream_response
from servewise.server.request_log import log_finished
from servewise.server.slo_runtime import ANONYMOUS, Ticket, reserved_tokens
from servewise.server.state import ServerState
from servewise.server.validation import ValidGeneration
from servewise.slo import Outcome, RequestUsage, Tenant


def request_tenant(request: Request) -> Tenant:
    tenant: Tenant = request.scope.get("state", {}).get("tenant", ANONYMOUS)
    return tenant


def session_key(request: Request, tenant: Tenant, user: str | None) -> str | None:
    """What keeps one conversation on one model version during a rollout: the X-Session-Id header,
    else the API key's tenant with the request's ``user`` field; None when there is neither."""
    header = request.headers.get("x-session-id")
    if header:
        return f"session:{header}"
    if tenant is ANONYMOUS and not user:
        return None
    return f"tenant:{tenant.name}|user:{user or ''}"


def request_id(request: Request) -> str:
    rid: str = request.scope["state"]["request_id"]
    return rid


async def run_generation(request: Request, state: ServerState, valid: ValidGeneration, arrival_s: float,
                         endpoint: str) -> Response:
    backend = state.require_backend()
    for prompt in valid.prompts:  # 400 before anything is queued, limited or streamed
        backend.validate_prompt(prompt, valid.params)
    if valid.params.grammar is not None:
        await _compile_grammar(state, backend, valid)
    tenant = request_tenant(request)
    slo_class = state.slo.classify(tenant, valid.priority or request.headers.get("x-slo-class"))
    reserved = reserved_tokens([len(p) for p in valid.prompts], valid.params.n, valid.params.max_tokens,
                               backend.model_info.max_model_len)
    session = session_key(request, tenant, valid.user)
    ticket = state.slo.admit(tenant, slo_class, reserved,
                             lambda key: backend.admit(key, valid.prompts, slo_class, session))
    gen = _generation(backend, ticket, valid, request_id(request), arrival_s)
    try:
        await gen.start()
    except BaseException as exc:  # refused downstream (a fleet replica shed it) or failed before any byte
        backend.on_finished(ticket.key)
        state.slo.abandon(ticket, Outcome.SHED if isinstance(exc, OverloadedError) else Outcome.SERVER_ERROR)
        raise
    formatter = state.formatter if valid.want_logprobs else None
    created = int(time.time())
    headers = {"X-Request-Id": gen.request_id}
    version = backend.served_by(ticket.key)
    if version is not None:  # a fleet: which model version answers (sticky per session in a rollout)
        headers["X-ServeWise-Version"] = version
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
                await gen.aclose()
                _finished(state, backend, gen, endpoint, status, ticket)

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})
    task = asyncio.create_task(full_response(gen, created, state.fingerprint, formatter))
    status = "error"
    try:
        result = await _until_disconnect(request, task)
        status = "ok" if result is not None else "disconnected"
    finally:
        await gen.aclose()
        _finished(state, backend, gen, endpoint, status, ticket)
    if result is None:
        return Response(status_code=499)  # the client is gone; nobody reads this
    return JSONResponse(result, headers=headers)


async def _compile_grammar(state: ServerState, backend: Backend, valid: ValidGeneration) -> None:
    """Compile the output constraint now (off the event loop, cached), so a bad or too complex one is
    a 400 before anything is queued."""
    assert valid.params.grammar is not None
    try:
        result = await backend.compile_grammar(valid.params.grammar)
    except InvalidRequestError as exc:
        raise InvalidRequestError(exc.message, param=valid.grammar_param, code=exc.code) from None
    if state.metrics is not None:
        kind = "tools" if valid.tools is not None else valid.params.grammar.kind.value
        state.metrics.observe_grammar(kind, result.compiled.compile_s, result.cache_hit)


def _generation(backend: Backend, ticket: Ticket, valid: ValidGeneration, rid: str, arrival_s: float) -> Generation:
    ctx = CallContext(arrival_s=arrival_s, slo_class=ticket.slo_class, admission_key=ticket.key)
    internal = uuid.uuid4().hex

    def first_token(ttft_s: float) -> None:
        if not ticket.first_token_seen:
            ticket.first_token_seen = True
            backend.on_first_token(ticket.key, ttft_s)

    return Generation(lambda engine_id, prompt: backend.open_stream(engine_id, prompt, valid.params, ctx), valid, rid,
                      arrival_s, [f"{internal}-{i}" for i in range(len(valid.prompts))],
                      decode=lambda ids: backend.tokenizer.decode(ids, skip_special_tokens=False),
                      on_first_token=first_token)


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


def _finished(state: ServerState, backend: Backend, gen: Generation, endpoint: str, status: str,
              ticket: Ticket) -> None:
    """Metrics, SLO attainment, usage, rate-limit settlement and the log line of a finished request."""
    backend.on_finished(ticket.key)
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
