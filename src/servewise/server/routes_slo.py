"""SLO attainment (`GET /v1/slo`) and per-tenant usage and cost (`GET /v1/usage`, admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from servewise.server.flow import request_tenant
from servewise.server.routes_openai import get_state

router = APIRouter()


@router.get("/v1/slo")
async def slo(request: Request) -> JSONResponse:
    state = get_state(request)
    body: dict[str, Any] = {"classes": state.slo.tracker.snapshot(),
                            "admission": state.backend.admission_snapshot() if state.backend else None}
    if state.backend is not None:
        reports = await state.backend.replica_reports()
        if reports:
            body["replicas"] = {r.replica: r.slo for r in reports}
    return JSONResponse(body)


@router.get("/v1/usage")
async def usage(request: Request) -> JSONResponse:
    state = get_state(request)
    if state.slo.auth_required:
        request_tenant(request).require_admin()
    return JSONResponse(state.slo.usage.snapshot())
