"""What the HTTP layer holds: the backend (once loaded), config, metrics, lifecycle flags."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from servewise import __version__
from servewise.config import EngineConfig, ServerConfig
from servewise.engine.stats import EngineStats
from servewise.errors import ServiceUnavailableError
from servewise.server.backend import Backend
from servewise.server.metrics import ServerMetrics
from servewise.server.responses import LogprobFormatter
from servewise.server.slo_runtime import SLORuntime, SLOSettings
from servewise.slo import MetricSample

logger = logging.getLogger("servewise.server")


@dataclass
class ServerState:
    config: ServerConfig
    engine_config: EngineConfig
    # Builds the backend (slow: loads the model); run in a thread so /health answers meanwhile.
    backend_factory: Callable[[], Backend]
    settings: SLOSettings
    slo: SLORuntime
    backend: Backend | None = None
    load_error: str | None = None
    metrics: ServerMetrics | None = None
    formatter: LogprobFormatter | None = None
    fingerprint: str = ""
    draining: bool = False
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    # Called once if the model fails to load (`servewise serve` then exits 1); None: stay up, 503.
    on_load_error: Callable[[], None] | None = None

    def stats(self) -> EngineStats:
        return self.backend.stats() if self.backend is not None else EngineStats()

    def require_backend(self) -> Backend:
        """The backend if it can take new work, else a 503 saying why."""
        if self.draining:
            raise ServiceUnavailableError("the server is shutting down", retry_after_s=5)
        if self.backend is None:
            reason = self.load_error or "the model is still loading"
            raise ServiceUnavailableError(reason, retry_after_s=None if self.load_error else 5)
        down = self.backend.not_ready_reason(float("inf"))
        if down is not None:
            raise ServiceUnavailableError(f"the engine is not running: {down}", retry_after_s=5)
        return self.backend

    def not_ready_reason(self) -> str | None:
        if self.draining:
            return "draining"
        if self.backend is None:
            return self.load_error or "loading model"
        return self.backend.not_ready_reason(self.settings.watchdog_timeout_s)

    async def start_backend(self) -> None:
        """Load the model in a worker thread, then start the backend on this event loop."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Backend] = loop.create_future()

        def load() -> None:
            try:
                backend = self.backend_factory()
            except BaseException as exc:  # reported by /ready and every request, logged once
                loop.call_soon_threadsafe(_set_exception, done, exc)
            else:
                loop.call_soon_threadsafe(_set_result, done, backend)

        threading.Thread(target=load, name="servewise-load", daemon=True).start()
        try:
            backend = await done
        except Exception as exc:
            self.load_error = f"model failed to load: {exc}"
            logger.error(self.load_error)
            self.loaded.set()
            if self.on_load_error is not None:
                self.on_load_error()
            return
        backend.start(loop)
        info = backend.model_info

        def samples() -> Iterator[MetricSample]:
            yield from self.slo.metric_samples()
            yield from backend.metric_samples()

        self.metrics = ServerMetrics(info.name, backend.stats if backend.has_engine_series() else None, samples,
                                     cpu_kernels=info.cpu_kernels if backend.has_engine_series() else None)
        self.formatter = LogprobFormatter(backend.tokenizer)
        self.fingerprint = "fp_" + hashlib.sha256(f"{__version__}|{info.path}|{self.engine_config}".encode()
                                                  ).hexdigest()[:10]
        self.backend = backend
        logger.info("model %s loaded from %s: context %d tokens, KV cache %d blocks × %d tokens = %d tokens",
                    info.name, info.path, info.max_model_len, info.num_kv_blocks, info.block_size,
                    info.num_kv_blocks * info.block_size)
        self.loaded.set()


def _set_result(fut: asyncio.Future[Backend], value: Backend) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Backend], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
