"""The fleet's rollout admin API (admin API key when keys are configured):

- ``GET /v1/admin/rollout``: the baseline, the versions, the current rollout with its step's windows
  (and the shadow comparison), the decisions, the history;
- ``POST /v1/admin/rollout`` with a spec (JSON, the same fields as ``rollout.yaml``): start (409 while
  one runs, 400 with the reason for a bad spec, before any traffic moves);
- ``POST /v1/admin/rollout/{promote,pause,resume,abort}``.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from servewise.config import ConfigError
from servewise.errors import InvalidRequestError, ServiceUnavailableError
from servewise.fleet.rollout_runtime import RolloutManager
from servewise.fleet.rollout_spec import rollout_spec_from_dict
from servewise.server.flow import request_tenant
from servewise.server.routes_openai import get_state, read_body

router = APIRouter()
COMMANDS = ("promote", "pause", "resume", "abort")


def _manager(request: Request) -> RolloutManager:
    state = get_state(request)
    if state.slo.auth_required:
        request_tenant(request).require_admin()
    manager = getattr(state.require_backend(), "rollout", None)
    if not isinstance(manager, RolloutManager):
        raise ServiceUnavailableError("rollouts need a fleet (`servewise serve --replicas N`)")
    return manager


@router.get("/v1/admin/rollout")
async def rollout_status(request: Request) -> JSONResponse:
    return JSONResponse(_manager(request).status())


@router.post("/v1/admin/rollout")
async def rollout_start(request: Request) -> JSONResponse:
    manager = _manager(request)
    raw = await read_body(request, get_state(request).config.max_body_bytes)
    try:
        body = json.loads(raw or b"{}")
        spec = rollout_spec_from_dict(body.get("spec", body) if isinstance(body, dict) else body)
    except ValueError as exc:  # bad JSON (json.JSONDecodeError) or a bad spec (ConfigError)
        raise InvalidRequestError(str(exc), param="spec") from None
    try:
        return JSONResponse(await manager.begin(spec), status_code=201)
    except ConfigError as exc:  # a candidate that cannot serve beside the baseline
        raise InvalidRequestError(str(exc), param="spec") from None


@router.post("/v1/admin/rollout/{command}")
async def rollout_command(command: str, request: Request) -> JSONResponse:
    manager = _manager(request)
    if command not in COMMANDS:
        raise InvalidRequestError(f"unknown rollout command {command!r}; known: {', '.join(COMMANDS)}",
                                  param="command")
    try:
        return JSONResponse(await manager.command(command))
    except ConfigError as exc:
        raise InvalidRequestError(str(exc)) from None
