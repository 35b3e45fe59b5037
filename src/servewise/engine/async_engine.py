"""AsyncEngine: the engine's step loop in one background thread, streams for asyncio callers.

The loop thread owns the LLMEngine (scheduler, KV cache, model). Callers talk to
it through an inbox (adds and aborts) and get each request's outputs on an
asyncio queue; one ``call_soon_threadsafe`` per step hands a whole step's
outputs to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from servewise.engine.llm_engine import LLMEngine, ModelInfo
from servewise.engine.stats import EngineStats
from servewise.engine.structured import CompiledGrammar, CompileResult
from servewise.errors import EngineError, ServiceUnavailableError
from servewise.types import FinishReason, GrammarSpec, RequestOutput, SamplingParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Add:
    request_id: str
    prompt_token_ids: Sequence[int]
    params: SamplingParams
    arrival_s: float
    priority: int
    deadline_s: float | None
    tpot_s: float | None
    grammar: CompiledGrammar | None


@dataclass(frozen=True)
class _Abort:
    request_id: str
    reason: FinishReason


class AsyncEngine:
    def __init__(self, engine: LLMEngine, idle_poll_s: float = 0.5) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_info: ModelInfo = engine.model_info
        self._inbox: queue.SimpleQueue[_Add | _Abort] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._idle_poll_s = idle_poll_s
        self.dead_reason: str | None = None  # set if the loop thread died
        self.stats: EngineStats = engine.snapshot_stats()  # republished after every step
        self.num_in_flight = 0  # requests accepted and not yet finished (event-loop side)
        self.work_since_s: float | None = None  # monotonic time in-flight work last went from 0 to 1

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run_loop, name="servewise-engine", daemon=True)
        self._thread.start()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.dead_reason is None

    def shutdown(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ---- requests -------------------------------------------------------------------------
    async def compile_grammar(self, spec: GrammarSpec) -> CompileResult:
        """Compile (or find cached) in the compiler's pool, off the engine loop and the event loop.
        InvalidRequestError if the spec does not compile or takes longer than the configured timeout."""
        return await self.engine.grammars.compile_async(spec)

    async def generate(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams, *,
                       priority: int = 0, deadline_s: float | None = None, tpot_s: float | None = None,
                       arrival_s: float | None = None) -> AsyncGenerator[RequestOutput, None]:
        """Stream the request's outputs; leaving the iterator early aborts the request. tpot_s: the
        time-per-output-token target of its SLO class, which the engine sizes its steps by.

        Validation errors (InvalidRequestError, ContextLengthError) raise before the first output.
        """
        if not self.is_running:
            raise ServiceUnavailableError(f"the engine is not running ({self.dead_reason or 'not started'})")
        self.engine.validate_prompt(prompt_token_ids, params)
        if request_id in self._streams:
            raise EngineError(f"duplicate request id {request_id!r}")
        grammar = (await self.compile_grammar(params.grammar)).compiled if params.grammar is not None else None
        stream: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._streams[request_id] = stream
        if self.num_in_flight == 0:
            self.work_since_s = time.monotonic()
        self.num_in_flight += 1
        self._send(_Add(request_id, list(prompt_token_ids), params,
                        arrival_s if arrival_s is not None else time.monotonic(), priority, deadline_s, tpot_s,
                        grammar))
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            self.num_in_flight -= 1
            if self.num_in_flight == 0:
                self.work_since_s = None
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str, reason: FinishReason = FinishReason.ABORT) -> None:
        self._send(_Abort(request_id, reason))

    def abort_all(self, reason: FinishReason) -> None:
        for request_id in list(self._streams):
            self.abort(request_id, reason)

    def _send(self, message: _Add | _Abort) -> None:
        self._inbox.put(message)
        self._wakeup.set()

    # ---- the loop thread ------------------------------------------------------------------
    def _run_loop(self) -> None:
        engine = self.engine
        try:
            while not self._stopping:
                self._wakeup.clear()
                self._drain_inbox()
                if not engine.has_unfinished_requests:
                    self.stats = engine.snapshot_stats()
                    self._wakeup.wait(self._idle_poll_s)
                    continue
                outputs = engine.step()
                self.stats = engine.snapshot_stats()
                if outputs:
                    self._deliver(outputs)
        except BaseException as exc:  # the loop itself broke: fail everyone, report not-ready
            logger.exception("engine loop died")
            self.dead_reason = f"engine loop died: {type(exc).__name__}"
            self._deliver_error(ServiceUnavailableError("the engine stopped unexpectedly"))

    def _drain_inbox(self) -> None:
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(msg, _Abort):
                self.engine.abort_request(msg.request_id, msg.reason)
                continue
            try:
                self.engine.add_request(msg.request_id, msg.prompt_token_ids, msg.params,
                                        arrival_s=msg.arrival_s, priority=msg.priority,
                                        deadline_s=msg.deadline_s, tpot_s=msg.tpot_s, grammar=msg.grammar)
            except Exception as exc:  # validated already; anything here fails just this request
                self._deliver_error(exc, msg.request_id)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put_nowait(out)

    def _deliver_error(self, exc: BaseException, request_id: str | None = None) -> None:
        def put() -> None:
            targets = [request_id] if request_id else list(self._streams)
            for rid in targets:
                stream = self._streams.get(rid)
                if stream is not None:
                    stream.put_nowait(exc)

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(put)
