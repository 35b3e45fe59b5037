"""One engine request through the fleet, on one version's replicas.

Sent until a replica accepts it (a replica that sheds hands it to the next-best once; one that
fails before any output hands it on up to ``max_failovers`` times), then streamed. What it saw
(first and last token, tokens, how it ended) is kept for the rollout's analysis and shadow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from servewise.errors import OverloadedError, ReplicaLostError
from servewise.fleet.messages import Accepted, OutputBatch, ReplicaMessage, ReplicaRequest, Shed
from servewise.fleet.rollout_window import RequestOutcome
from servewise.fleet.router_core import FleetRouter
from servewise.server.backend import CallContext, ReplicaReport
from servewise.types import RequestOutput, SamplingParams

if TYPE_CHECKING:
    from servewise.fleet.ingress import FleetBackend

SendFn = Callable[[ReplicaRequest], AsyncGenerator[ReplicaMessage, None]]


class ReplicaFailure(Exception):
    """A replica died or could not be reached while serving a request (the Ray glue's errors)."""

    def __init__(self, message: str, replica_id: str | None = None) -> None:
        super().__init__(message)
        self.replica_id = replica_id


@dataclass(frozen=True)
class VersionTarget:
    """One model version of the fleet: its engine replicas, reached through Ray (``ray_engines``)."""

    name: str  # e.g. "v1"
    router: FleetRouter  # this version's routing state
    send: SendFn
    reports: Callable[[], Awaitable[list[ReplicaReport]]]


class FleetCall:
    def __init__(self, fleet: FleetBackend, target: VersionTarget, request_id: str, prompt: Sequence[int],
                 params: SamplingParams, ctx: CallContext, mirror: bool = False) -> None:
        self.fleet = fleet
        self.mirror = mirror  # a shadow copy: never the user's, never counted
        self.target = target
        self.request_id = request_id
        self.prompt = tuple(prompt)
        self.params = params
        self.ctx = ctx
        self.exclude: set[str] = set()
        self.replica: str | None = None
        self.num_sheds = 0
        self.num_failures = 0
        self.started = False  # an output went out: the request can no longer move
        self.first_token_s: float | None = None  # this process's clock
        self.last_token_s: float | None = None
        self.token_ids: list[int] = []  # of completion 0 (what a shadow comparison looks at)
        self.num_tokens = 0
        self.outcome: RequestOutcome | None = None  # None while running, or when the client left
        self.done = asyncio.Event()
        self._messages: AsyncGenerator[ReplicaMessage, None] | None = None
        self._closed = False

    async def accept(self) -> None:
        """Send until a replica accepts; OverloadedError after a shed retry, ReplicaLostError after
        ``max_failovers`` failures."""
        settings = self.fleet.settings
        while True:
            await self._close_messages()
            route = self.fleet.route_info(self.target.router, self.request_id, self.prompt, self.ctx.slo_class,
                                          frozenset(self.exclude))
            req = ReplicaRequest(self.request_id, self.prompt, self.params, self.ctx.slo_class, route,
                                 age_s=time.monotonic() - self.ctx.arrival_s)
            self._messages = self.target.send(req)
            try:
                first = await anext(self._messages)
            except ReplicaFailure as exc:
                self._failed(exc)
                continue
            except StopAsyncIteration:
                raise self._lost("an engine replica ended the request without answering") from None
            if isinstance(first, Accepted):
                self.replica = first.replica_id
                return
            if isinstance(first, Shed):
                self.exclude.add(first.replica_id)
                if self.num_sheds >= settings.max_shed_retries:
                    self.outcome = RequestOutcome.SHED
                    raise OverloadedError(first.message, retry_after_s=first.retry_after_s, reason=first.reason)
                self.num_sheds += 1
                self.fleet.num_shed_retries += 1
                continue
            raise self._lost("an engine replica answered out of protocol")

    def _lost(self, message: str) -> ReplicaLostError:
        self.outcome = RequestOutcome.ERROR
        return ReplicaLostError(message, retry_after_s=1)

    def _failed(self, exc: ReplicaFailure) -> None:
        """Raises ReplicaLostError once the request has started or used its failovers; else
        rules the failed replica out for it."""
        router = self.target.router
        lost = exc.replica_id or self.replica or router.replica_of(self.request_id)
        if self.started or self.num_failures >= self.fleet.settings.max_failovers:
            self.fleet.num_cut_streams += self.started
            raise self._lost(f"engine replica {lost or '?'} failed: {exc}") from None
        self.num_failures += 1
        self.fleet.num_failovers += 1
        if lost is not None:
            self.exclude.add(lost)
            router.remove_replica(lost)

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
        now = time.monotonic()
        offset = now - msg.sent_s  # carries the message's transit time too
        shifted: set[int] = set()  # outputs of one request share one timings object
        for out in msg.outputs:
            _shift(out, offset, shifted)
            new = [t for c in out.outputs for t in c.token_ids]
            if new and self.first_token_s is None:
                first = out.timings.first_token_s
                self.first_token_s = first if first is not None else now
                self.target.router.on_first_token(self.request_id, self.first_token_s - self.ctx.arrival_s,
                                                  out.num_cached_tokens)
            if new:
                self.last_token_s = now
                self.num_tokens += len(new)
                self.token_ids.extend(t for c in out.outputs if c.index == 0 for t in c.token_ids)
            if out.finished:
                failed = out.error is not None or any(c.finish_reason is not None and c.finish_reason.value == "error"
                                                      for c in out.outputs)
                self.outcome = RequestOutcome.ERROR if failed else RequestOutcome.SERVED
        return msg.outputs

    async def _close_messages(self) -> None:
        if self._messages is not None:
            await self._messages.aclose()  # cancels the replica's request if it still runs
            self._messages = None

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._close_messages()
            self.done.set()
            self.fleet.call_closed(self)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.ctx.arrival_s

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_s is None or self.last_token_s is None or self.num_tokens < 2:
            return None
        return (self.last_token_s - self.first_token_s) / (self.num_tokens - 1)


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
