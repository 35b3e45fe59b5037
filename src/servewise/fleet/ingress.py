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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from servewise.engine.kv_cache_manager import chain_hashes
from servewise.engine.llm_engine import ModelInfo, check_prompt
from servewise.engine.stats import EngineStats
from servewise.errors import OverloadedError, ReplicaLostError
from servewise.fleet.messages import Accepted, OutputBatch, ReplicaMessage, ReplicaRequest, Shed
from servewise.fleet.router_core import FleetRouter
from servewise.fleet.stats import RouteInfo
from servewise.loading.tokenizer import Tokenizer
from servewise.server.backend import CallContext, ReplicaReport
from servewise.slo import MetricSample, SLOClass
from servewise.types import FinishReason, RequestOutput, SamplingParams

SendFn = Callable[[ReplicaRequest], AsyncIterator[ReplicaMessage]]


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
                 settings: IngressSettings | None = None) -> None:
        self.tokenizer = tokenizer
        self.model_info = model_info
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
    async def stream(self, request_id: str, prompt: Sequence[int], params: SamplingParams,
                     ctx: CallContext) -> AsyncIterator[RequestOutput]:
        exclude: set[str] = set()
        sheds = failures = 0
        started = False
        self.num_in_flight += 1
        try:
            while True:
                route = self.route_info(request_id, prompt, ctx.slo_class, frozenset(exclude))
                req = ReplicaRequest(request_id, tuple(prompt), params, ctx.slo_class, route,
                                     age_s=time.monotonic() - ctx.arrival_s)
                replica: str | None = None
                try:
                    async for item in self._attempt(req, ctx):
                        if isinstance(item, Accepted):
                            replica = item.replica_id
                            continue
                        if isinstance(item, Shed):
                            exclude.add(item.replica_id)
                            if sheds >= self.settings.max_shed_retries:
                                raise OverloadedError(item.message, retry_after_s=item.retry_after_s,
                                                      reason=item.reason)
                            sheds += 1
                            self.num_shed_retries += 1
                            break
                        started = True
                        yield item
                    else:
                        return
                except ReplicaFailure as exc:
                    lost = exc.replica_id or replica
                    if started or failures >= self.settings.max_failovers:
                        self.num_cut_streams += started
                        raise ReplicaLostError(f"engine replica {lost or '?'} failed: {exc}",
                                               retry_after_s=1) from None
                    failures += 1
                    self.num_failovers += 1
                    if lost is not None:
                        exclude.add(lost)
                        self.router.remove_replica(lost)
        finally:
            self.num_in_flight -= 1
            self.router.on_finished(request_id)

    async def _attempt(self, req: ReplicaRequest, ctx: CallContext) -> AsyncIterator[Accepted | Shed | RequestOutput]:
        """One replica's answer: its Accepted/Shed, then outputs mapped onto this process's clock."""
        offset: float | None = None
        first_token = False
        async for msg in self._send(req):
            if not isinstance(msg, OutputBatch):
                yield msg
                continue
            if offset is None:
                offset = time.monotonic() - msg.sent_s
            shifted: set[int] = set()  # outputs of one request share one timings object
            for out in msg.outputs:
                _shift(out, offset, shifted)
                if not first_token and any(c.token_ids for c in out.outputs):
                    first_token = True
                    first = out.timings.first_token_s
                    ttft = (first if first is not None else time.monotonic()) - ctx.arrival_s
                    self.router.on_first_token(req.route.key, ttft, out.num_cached_tokens)
                yield out

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
