"""Health that reflects progress (the watchdog) and graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn

from servewise.server.state import ServerState
from servewise.types import FinishReason

logger = logging.getLogger("servewise.server")


async def run_watchdog(state: ServerState, period_s: float = 0.5) -> None:
    """Log every change of readiness once the backend runs; /ready asks the backend directly."""
    stalled: str | None = None
    while True:
        await asyncio.sleep(period_s)
        reason = state.not_ready_reason() if state.backend is not None and not state.draining else None
        if reason and not stalled:
            logger.error("not ready: %s", reason)
        elif stalled and not reason:
            logger.warning("engine progressing again after a stall; ready")
        stalled = reason


async def drain(state: ServerState, timeout_s: float) -> None:
    """Refuse new work, let in-flight requests finish up to timeout_s, then cut the rest short."""
    state.draining = True
    engine = state.backend
    if engine is None:
        return
    logger.info("draining: %d requests in flight, up to %g s", engine.num_in_flight, timeout_s)
    deadline = time.monotonic() + timeout_s
    while engine.num_in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if engine.num_in_flight:
        logger.warning("drain timeout: ending %d requests early", engine.num_in_flight)
        engine.abort_all(FinishReason.DRAIN)
        cut_deadline = time.monotonic() + 5.0
        while engine.num_in_flight and time.monotonic() < cut_deadline:
            await asyncio.sleep(0.05)
    logger.info("drained")


class DrainingServer(uvicorn.Server):
    """uvicorn with ServeWise's SIGTERM semantics.

    First SIGTERM/SIGINT: /ready turns 503 at once, new requests get 503 + Retry-After,
    in-flight ones finish (up to the drain timeout), then the process exits 0.
    A second signal ends everything at once. A model that fails to load stops the server.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout_s = drain_timeout_s
        self._num_signals = 0
        self._drain_task: asyncio.Task[None] | None = None
        state.on_load_error = self._stop_after_load_error

    def _stop_after_load_error(self) -> None:
        # Nothing to serve: exit (status 1, see cmd_serve) so a supervisor shows the error at once
        # rather than a process that stays up answering 503.
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's handler: it would re-raise the signal after shutdown (exit status 143).
        self._num_signals += 1
        loop = asyncio.get_event_loop()
        if self._num_signals == 1:
            logger.info("received %s: draining", signal.Signals(sig).name)
            loop.call_soon_threadsafe(self._start_drain)
        else:
            logger.warning("received %s again: stopping now", signal.Signals(sig).name)
            self.state.draining = True
            if self.state.backend is not None:
                self.state.backend.abort_all(FinishReason.DRAIN)
            self.should_exit = True

    def _start_drain(self) -> None:
        async def run() -> None:
            await drain(self.state, self.drain_timeout_s)
            self.should_exit = True

        self._drain_task = asyncio.ensure_future(run())
