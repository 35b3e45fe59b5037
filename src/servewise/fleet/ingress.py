"""The fleet's backend at the ingress: fleet admission, routing, retries, failover.

The ingress runs the same FastAPI app as `servewise serve`; only its ``Backend`` differs.
Per engine request:

1. admission: the router scores every replica; 429 when even the best would miss the
   class's TTFT target × slack (``FleetRouter.admit``);
2. send: Ray Serve's request router (``ray_router.py``) picks the best-scored replica;
3. the replica's own admission may still shed it (it knows its queue exactly): the request
   is retried once on the next-best replica, then the client gets the 429;
4. a replica that dies or cannot be reached before any output reached the client: the
   request goes to another replica (up to ``max_failovers`` times); after that, or once
   output has gone out, the request fails with ``ReplicaLostError`` (a stream ends with an
   SSE error event naming the cause, never a silent truncation).

Ray is not imported here: the Ray glue passes ``send`` and turns its errors into
``ReplicaFailure``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from servewise.config import StructuredOutputConfig
from servewise.engine.kv_cache_manager import chain_hashes
from servewise.engine.llm_engine import ModelInfo, check_prompt
from servewise.engine.stats import EngineStats
from servewise.engine.structured import CompileResult, GrammarCompiler
from servewise.errors import OverloadedError, ReplicaLostError
from servewise.fleet.messages import Accepted, OutputBatch, ReplicaMessage, ReplicaRequest, Shed
from servewise.fleet.router_core import FleetRouter
from servewise.fleet.stats import RouteInfo
from servewise.loading.tokenizer import Tokenizer
from servewise.server.backend import CallContext, ReplicaReport
from servewise.slo import MetricSample, SLOClass
from servewise.types import FinishReason, GrammarSpec, RequestOutput, SamplingParams

SendFn = Callable[[ReplicaRequest], AsyncGenerator[ReplicaMessage, None]]


class ReplicaFailure(Exception):
    """A replica died or could not be reached while serving a request (the Ray glue's errors)."""

    def __init__(self, message: str, replica_id: str | None = None) -> None:
        super().__init__(message)
        self.replica_id = replica_id


@dataclass(frozen=True)
class IngressSettings:
    max_failovers: int = 2  # times a request that has not started goes to another replica after a failure
    max_shed_retries: int = 1  # times a request a replica shed goes to the next-best replica


class FleetBackend:
    def __init__(self, tokenizer: Tokenizer, model_info: ModelInfo, router: FleetRouter, send: SendFn,
                 reports: Callable[[], Awaitable[list[ReplicaReport]]],
                 settings: IngressSettings | None = None,
                 structured: StructuredOutputConfig | None = None) -> None:
        self.tokenizer = tokenizer
        self.model_info = model_info
        self._structured = structured or StructuredOutputConfig()
        self._grammars: GrammarCompiler | None = None  # built on the first constrained request
        self.router = router
        self.settings = settings or IngressSettings()
        self._send = send
        self._reports = reports
        self._tasks: set[asyncio.Task[Any]] = set()
        self.num_in_flight = 0
        self.num_failovers = 0
        self.num_cut_streams = 0
        self.num_shed_retries = 0

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        pass  # nothing runs here: the replicas run engines, Ray runs the routing loop

    def shutdown(self) -> None:
        pass

    def not_ready_reason(self, watchdog_timeout_s: float) -> str | None:
        if not any(s.accepting for s in self.router.replica_stats()):
            return "no engine replica is ready"
        return None

    def stats(self) -> EngineStats:
        replicas = self.router.replica_stats()
        return EngineStats(num_running=sum(s.num_running for s in replicas),
                           num_waiting=sum(s.num_waiting for s in replicas),
                           kv_cache_usage=max((s.kv_cache_usage for s in replicas), default=0.0))

    def has_engine_series(self) -> bool:
        return False

    # -- admission ----------------------------------------------------------------------------
    def validate_prompt(self, prompt: Sequence[int], params: SamplingParams) -> None:
        check_prompt(self.model_info, prompt, params)

    def route_info(self, key: str, prompt: Sequence[int], slo_class: SLOClass,
                   exclude: frozenset[str] = frozenset()) -> RouteInfo:
        block = self.model_info.block_size
        num_blocks = min(len(prompt) // block, self.router.config.max_prefix_blocks)
        return RouteInfo(key=key, num_prompt_tokens=len(prompt),
                         block_hashes=tuple(chain_hashes(prompt, block, 0, num_blocks)),
                         priority=slo_class.priority, exclude=exclude)

    async def compile_grammar(self, spec: GrammarSpec) -> CompileResult:
        """Compiled here too, so a bad constraint is a 400 at the ingress; each replica compiles
        (and caches) its own for its matchers."""
        if self._grammars is None:
            self._grammars = GrammarCompiler(self.tokenizer, self.model_info.vocab_size,
                                             self.tokenizer.eos_token_ids, self._structured)
        return await self._grammars.compile_async(spec)

    def admit(self, key: int, prompts: Sequence[Sequence[int]], slo_class: SLOClass) -> float:
        predicted = 0.0
        for i, prompt in enumerate(prompts):
            best = self.router.admit(self.route_info(f"admit-{key}-{i}", prompt, slo_class), slo_class)
            predicted = max(predicted, best.ttft_s if best is not None else 0.0)
        return predicted

    def on_first_token(self, key: int, ttft_s: float) -> None:
        pass  # the router scores each engine request (``stream``), not the HTTP request

    def on_finished(self, key: int) -> None:
        pass

    # -- serving ------------------------------------------------------------------------------
    async def open_stream(self, request_id: str, prompt: Sequence[int], params: SamplingParams,
                          ctx: CallContext) -> AsyncGenerator[RequestOutput, None]:
        call = _FleetCall(self, request_id, prompt, params, ctx)
        self.num_in_flight += 1
        try:
            await call.accept()
        except BaseException:
            await call.close()
            raise
        return call.outputs()

    def _on_closed(self, call: _FleetCall) -> None:
        self.num_in_flight -= 1
        self.router.on_finished(call.request_id)

    def abort_all(self, reason: FinishReason) -> None:
        pass  # the server's drain cancels its streams; cancelling a stream cancels the replica's request

    # -- reporting ----------------------------------------------------------------------------
    def admission_snapshot(self) -> dict[str, Any]:
        return {**self.router.snapshot(), "failovers": self.num_failovers, "cut_streams": self.num_cut_streams,
                "shed_retries": self.num_shed_retries}

    def metric_samples(self) -> Iterator[MetricSample]:
        yield from self.router.metric_samples()
        replicas = self.router.replica_stats()
        num_accepting = sum(s.accepting for s in replicas)
        yield MetricSample("servewise:fleet_replicas", {"state": "accepting"}, float(num_accepting))
        yield MetricSample("servewise:fleet_replicas", {"state": "not_accepting"}, float(len(replicas) - num_accepting))
        yield MetricSample("servewise:router_failovers_total", {}, float(self.num_failovers))
        yield MetricSample("servewise:router_cut_streams_total", {}, float(self.num_cut_streams))
        yield MetricSample("servewise:router_shed_retries_total", {}, float(self.num_shed_retries))

    async def replica_reports(self) -> list[ReplicaReport]:
        return await self._reports()


class _FleetCall:
    """One engine request through the fleet: sent until a replica accepts it, then streamed,
    moved to another replica when one fails before any output went out."""

    def __init__(self, fleet: FleetBackend, request_id: str, prompt: Sequence[int], params: SamplingParams,
                 ctx: CallContext) -> None:
        self.fleet = fleet
        self.request_id = request_id
        self.prompt = tuple(prompt)
        self.params = params
        self.ctx = ctx
        self.exclude: set[str] = set()
        self.replica: str | None = None
        self.num_sheds = 0
        self.num_failures = 0
        self.started = False  # an output went out: the request can no longer move
        self.first_token = False
        self._messages: AsyncGenerator[ReplicaMessage, None] | None = None
        self._closed = False

    async def accept(self) -> None:
        """Send until a replica accepts; OverloadedError after a shed retry, ReplicaLostError after
        ``max_failovers`` failures."""
        settings = self.fleet.settings
        while True:
            await self._close_messages()
            route = self.fleet.route_info(self.request_id, self.prompt, self.ctx.slo_class, frozenset(self.exclude))
            req = ReplicaRequest(self.request_id, self.prompt, self.params, self.ctx.slo_class, route,
                                 age_s=time.monotonic() - self.ctx.arrival_s)
            self._messages = self.fleet._send(req)
            try:
                first = await anext(self._messages)
            except ReplicaFailure as exc:
                self._failed(exc)
                continue
            except StopAsyncIteration:
                raise ReplicaLostError("an engine replica ended the request without answering",
                                       retry_after_s=1) from None
            if isinstance(first, Accepted):
                self.replica = first.replica_id
                return
            if isinstance(first, Shed):
                self.exclude.add(first.replica_id)
                if self.num_sheds >= settings.max_shed_retries:
                    raise OverloadedError(first.message, retry_after_s=first.retry_after_s, reason=first.reason)
                self.num_sheds += 1
                self.fleet.num_shed_retries += 1
                continue
            raise ReplicaLostError("an engine replica answered out of protocol", retry_after_s=1)

    def _failed(self, exc: ReplicaFailure) -> None:
        """Raises ReplicaLostError once the request has started or used its failovers; else
        rules the failed replica out for it."""
        lost = exc.replica_id or self.replica or self.fleet.router.replica_of(self.request_id)
        if self.started or self.num_failures >= self.fleet.settings.max_failovers:
            self.fleet.num_cut_streams += self.started
            raise ReplicaLostError(f"engine replica {lost or '?'} failed: {exc}", retry_after_s=1) from None
        self.num_failures += 1
        self.fleet.num_failovers += 1
        if lost is not None:
            self.exclude.add(lost)
            self.fleet.router.remove_replica(lost)

    async def outputs(self) -> AsyncGenerator[RequestOutput, None]:
        try:
            while self._messages is not None:
                try:
                    async for msg in self._messages:
                        if isinstance(msg, OutputBatch):
                            for out in self._received(msg):
                                self.started = True
                                yield out
                    return
                except ReplicaFailure as exc:
                    self._failed(exc)
                    await self.accept()
        finally:
            await self.close()

    def _received(self, msg: OutputBatch) -> list[RequestOutput]:
        """Outputs in this process's clock; the first token is scored by the router."""
        offset = time.monotonic() - msg.sent_s  # carries the message's transit time too
        shifted: set[int] = set()  # outputs of one request share one timings object
        for out in msg.outputs:
            _shift(out, offset, shifted)
            if not self.first_token and any(c.token_ids for c in out.outputs):
                self.first_token = True
                first = out.timings.first_token_s
                ttft = (first if first is not None else time.monotonic()) - self.ctx.arrival_s
                self.fleet.router.on_first_token(self.request_id, ttft, out.num_cached_tokens)
        return msg.outputs

    async def _close_messages(self) -> None:
        if self._messages is not None:
            await self._messages.aclose()  # cancels the replica's request if it still runs
            self._messages = None

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._close_messages()
            self.fleet._on_closed(self)


def _shift(out: RequestOutput, offset_s: float, shifted: set[int]) -> None:
    """Replica monotonic times -> this process's (the offset also carries the message's transit time)."""
    t = out.timings
    if id(t) not in shifted:
        shifted.add(id(t))
        t.arrival_s += offset_s
        for name in ("first_scheduled_s", "first_token_s", "last_token_s", "finished_s"):
            value = getattr(t, name)
            if value is not None:
                setattr(t, name, value + offset_s)
    for c in out.outputs:
        c.token_times_s = [x + offset_s for x in c.token_times_s]
