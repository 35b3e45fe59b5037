"""The FastAPI application: routes, request ids, OpenAI-shaped errors, engine lifecycle."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servewise import __version__
from servewise.config import EngineConfig, ServerConfig
from servewise.errors import AuthenticationError, ServeWiseError
from servewise.server import routes_openai, routes_ops, routes_slo
from servewise.server.backend import Backend
from servewise.server.lifecycle import run_watchdog
from servewise.server.responses import error_body
from servewise.server.slo_runtime import ANONYMOUS, SLORuntime, SLOSettings
from servewise.server.state import ServerState

logger = logging.getLogger("servewise.server")
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestIdMiddleware:
    """Keeps a sane incoming X-Request-Id (or makes one) and returns it on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = incoming if incoming and _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


class AuthMiddleware:
    """With API keys configured, every route but the public ones needs a valid key (401 otherwise).
    The caller's tenant is left in the request state for the routes."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"authorization", b"x-api-key")}
        runtime = self.state.slo
        public = scope["path"] in self.state.settings.public_routes
        try:
            tenant = runtime.authenticate(headers.get("authorization"), headers.get("x-api-key"))
        except AuthenticationError as exc:
            if not public:
                response = _error_response(self.state, exc)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
            tenant = ANONYMOUS
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)


def _error_response(state: ServerState, exc: ServeWiseError) -> JSONResponse:
    if state.metrics is not None:
        state.metrics.count_failure(exc.error_type)
    headers = {}
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    code = exc.code or (exc.error_type if exc.http_status != 400 else None)
    return JSONResponse(error_body(exc.message, exc.openai_type, exc.param, code), status_code=exc.http_status,
                        headers=headers)


def create_app(server_config: ServerConfig, engine_config: EngineConfig,
               backend_factory: Callable[[], Backend], slo_settings: SLOSettings | None = None) -> FastAPI:
    """The app; the backend is built by ``backend_factory`` in a thread once the app starts."""
    settings = slo_settings or SLOSettings()
    state = ServerState(server_config, engine_config, backend_factory, settings, SLORuntime(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start_backend()
        watchdog = asyncio.create_task(run_watchdog(state))
        try:
            yield
        finally:
            watchdog.cancel()
            if state.backend is not None:
                state.backend.shutdown()

    app = FastAPI(title="ServeWise", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.servewise = state
    app.include_router(routes_openai.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_slo.router)

    @app.exception_handler(ServeWiseError)
    async def servewise_error(request: Request, exc: ServeWiseError) -> JSONResponse:
        return _error_response(state, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind, None, None), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        if state.metrics is not None:
            state.metrics.count_failure("internal_error")
        return JSONResponse(error_body("internal server error", "internal_server_error", None, "internal_error"),
                            status_code=500)

    app.add_middleware(AuthMiddleware, state=state)
    app.add_middleware(RequestIdMiddleware)  # added last = outermost: 401s carry a request id too
    return app


def local_backend_factory(config: EngineConfig, settings: SLOSettings | None = None) -> Callable[[], Backend]:
    """Builds the engine of this process (loading the model) with its predictive admission."""

    def build() -> Backend:
        from servewise.engine.async_engine import AsyncEngine
        from servewise.engine.llm_engine import LLMEngine
        from servewise.server.backend import LocalBackend
        from servewise.slo import AdmissionController

        admission = AdmissionController((settings or SLOSettings()).admission_config(config.scheduler))
        return LocalBackend(AsyncEngine(LLMEngine(config)), admission)

    return build


def json_log_formatter() -> logging.Formatter:
    class _Formatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return record.getMessage() if record.name == "servewise.requests" else super().format(record)

    return _Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
