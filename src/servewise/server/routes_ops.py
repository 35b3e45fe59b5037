"""Operational endpoints: liveness, readiness, version, metrics, tokenize/detokenize."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from servewise import __version__
from servewise.errors import InvalidRequestError
from servewise.server.messages import conversation
from servewise.server.metrics import merge_replica_metrics
from servewise.server.protocol import DetokenizeRequest, TokenizeRequest
from servewise.server.routes_openai import get_state, read_body
from servewise.server.tools import template_syntax
from servewise.server.validation import check_model, parse_body

router = APIRouter()


@router.get("/health")
async def health() -> JSONResponse:
    """Liveness: the process answers. Readiness is /ready."""
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    state = get_state(request)
    reason = state.not_ready_reason()
    if reason is not None:
        return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503,
                            headers={"Retry-After": "5"})
    stats = state.stats()
    return JSONResponse({"status": "ready", "num_requests_running": stats.num_running,
                         "num_requests_waiting": stats.num_waiting})


@router.get("/version")
async def version(request: Request) -> JSONResponse:
    backend = get_state(request).backend
    return JSONResponse({"version": __version__, "model": backend.model_info.name if backend else None,
                         "model_path": backend.model_info.path if backend else None})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = get_state(request)
    body = state.metrics.render() if state.metrics is not None else b""
    if state.backend is not None:
        reports = await state.backend.replica_reports()
        if reports:
            body = merge_replica_metrics(body.decode(), [(r.replica, r.metrics_text) for r in reports]).encode()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.post("/tokenize")
async def tokenize(request: Request) -> JSONResponse:
    state = get_state(request)
    engine = state.require_backend()
    req = parse_body(TokenizeRequest, await read_body(request, state.config.max_body_bytes))
    check_model(req.model, engine.model_info.name)
    tok = engine.tokenizer
    if req.messages is not None:
        messages, extra = conversation(req.messages, None, template_syntax(tok.chat_template)[1])
        text = tok.apply_chat_template(messages, add_generation_prompt=req.add_generation_prompt, **extra)
        tokens = tok.encode(text, add_special_tokens=False)
    else:
        tokens = tok.encode(req.prompt or "", add_special_tokens=req.add_special_tokens)
    return JSONResponse({"tokens": tokens, "count": len(tokens), "max_model_len": engine.model_info.max_model_len})


@router.post("/detokenize")
async def detokenize(request: Request) -> JSONResponse:
    state = get_state(request)
    engine = state.require_backend()
    req = parse_body(DetokenizeRequest, await read_body(request, state.config.max_body_bytes))
    check_model(req.model, engine.model_info.name)
    vocab = engine.model_info.vocab_size
    if any(not 0 <= t < vocab for t in req.tokens):
        raise InvalidRequestError(f"token ids must be in [0, {vocab})", param="tokens")
    return JSONResponse({"prompt": engine.tokenizer.decode(req.tokens, skip_special_tokens=False)})
