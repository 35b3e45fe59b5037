"""The OpenAI endpoints: chat completions, completions, models."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from servewise.errors import ModelNotFoundError, PayloadTooLargeError
from servewise.server.flow import run_generation
from servewise.server.protocol import ChatCompletionRequest, CompletionRequest
from servewise.server.state import ServerState
from servewise.server.validation import Body, ValidGeneration, parse_body, parse_chat, parse_completion

router = APIRouter()


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.servewise
    return state


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
    backend = state.require_backend()
    body = parse_body(body_model, await read_body(request, state.config.max_body_bytes))
    valid = parse(body, backend.tokenizer, backend.model_info.name, state.config)
    return await run_generation(request, state, valid, arrival_s, endpoint)


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    backend = get_state(request).require_backend()
    return JSONResponse({"object": "list", "data": [_model_card(backend.model_info)]})


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> JSONResponse:
    backend = get_state(request).require_backend()
    if model_id != backend.model_info.name:
        raise ModelNotFoundError(f"the model {model_id!r} does not exist", param="model", code="model_not_found")
    return JSONResponse(_model_card(backend.model_info))


def _model_card(info: Any) -> dict[str, Any]:
    return {"id": info.name, "object": "model", "created": 0, "owned_by": "servewise",
            "max_model_len": info.max_model_len}
