"""SLO attainment (`GET /v1/slo`) and per-tenant usage and cost (`GET /v1/usage`, admin)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from servewise.server.routes_openai import get_state, request_tenant

router = APIRouter()


@router.get("/v1/slo")
async def slo(request: Request) -> JSONResponse:
    runtime = get_state(request).slo
    return JSONResponse({"classes": runtime.tracker.snapshot(), "admission": runtime.admission.snapshot()})


@router.get("/v1/usage")
async def usage(request: Request) -> JSONResponse:
    state = get_state(request)
    if state.slo.auth_required:
        request_tenant(request).require_admin()
    return JSONResponse(state.slo.usage.snapshot())
