"""What the HTTP layer holds: the engine (once loaded), config, metrics, lifecycle flags."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from servewise import __version__
from servewise.config import EngineConfig, ServerConfig
from servewise.engine.async_engine import AsyncEngine
from servewise.engine.stats import EngineStats
from servewise.errors import ServiceUnavailableError
from servewise.server.metrics import ServerMetrics
from servewise.server.responses import LogprobFormatter
from servewise.server.slo_runtime import SLORuntime, SLOSettings

logger = logging.getLogger("servewise.server")


@dataclass
class ServerState:
    config: ServerConfig
    engine_config: EngineConfig
    # Builds the engine (slow: loads the model); run in a thread so /health answers meanwhile.
    engine_factory: Callable[[], AsyncEngine]
    settings: SLOSettings
    slo: SLORuntime
    engine: AsyncEngine | None = None
    load_error: str | None = None
    metrics: ServerMetrics | None = None
    formatter: LogprobFormatter | None = None
    fingerprint: str = ""
    draining: bool = False
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    # Called once if the model fails to load (`servewise serve` then exits 1); None: stay up, 503.
    on_load_error: Callable[[], None] | None = None

    def stats(self) -> EngineStats:
        return self.engine.stats if self.engine is not None else EngineStats()

    def require_engine(self) -> AsyncEngine:
        """The engine if it can take new work, else a 503 saying why."""
        if self.draining:
            raise ServiceUnavailableError("the server is shutting down", retry_after_s=5)
        if self.engine is None:
            reason = self.load_error or "the model is still loading"
            raise ServiceUnavailableError(reason, retry_after_s=None if self.load_error else 5)
        if not self.engine.is_running:
            raise ServiceUnavailableError(f"the engine is not running: {self.engine.dead_reason}")
        return self.engine

    def not_ready_reason(self) -> str | None:
        if self.draining:
            return "draining"
        if self.engine is None:
            return self.load_error or "loading model"
        if not self.engine.is_running:
            return self.engine.dead_reason or "engine loop not running"
        return stall_reason(self, self.settings.watchdog_timeout_s)

    async def start_engine(self) -> None:
        """Load the model in a worker thread, then start the engine loop on this event loop."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[AsyncEngine] = loop.create_future()

        def load() -> None:
            try:
                engine = self.engine_factory()
            except BaseException as exc:  # reported by /ready and every request, logged once
                loop.call_soon_threadsafe(_set_exception, done, exc)
            else:
                loop.call_soon_threadsafe(_set_result, done, engine)

        threading.Thread(target=load, name="servewise-load", daemon=True).start()
        try:
            engine = await done
        except Exception as exc:
            self.load_error = f"model failed to load: {exc}"
            logger.error(self.load_error)
            self.loaded.set()
            if self.on_load_error is not None:
                self.on_load_error()
            return
        engine.start(loop)
        info = engine.model_info
        self.metrics = ServerMetrics(info.name, self.stats, self.slo.metric_samples, cpu_kernels=info.cpu_kernels)
        self.formatter = LogprobFormatter(engine.tokenizer)
        self.fingerprint = "fp_" + hashlib.sha256(f"{__version__}|{info.path}|{self.engine_config}".encode()
                                                  ).hexdigest()[:10]
        self.engine = engine
        logger.info("model %s loaded from %s: context %d tokens, KV cache %d blocks × %d tokens = %d tokens",
                    info.name, info.path, info.max_model_len, info.num_kv_blocks, info.block_size,
                    info.num_kv_blocks * info.block_size)
        self.loaded.set()


def stall_reason(state: ServerState, timeout_s: float, now_s: float | None = None) -> str | None:
    """Why the engine is not making progress, or None: work waits and no step ended for timeout_s."""
    engine = state.engine
    if engine is None or engine.work_since_s is None:
        return None
    now = time.monotonic() if now_s is None else now_s
    last_step = engine.stats.last_step_end_s or 0.0
    quiet_s = now - max(last_step, engine.work_since_s)
    if quiet_s <= timeout_s:
        return None
    return (f"engine stalled: no step completed for {quiet_s:.1f} s with {engine.num_in_flight} requests "
            f"in flight (watchdog timeout {timeout_s:g} s)")


def _set_result(fut: asyncio.Future[AsyncEngine], value: AsyncEngine) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[AsyncEngine], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
