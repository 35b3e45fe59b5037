"""One engine replica of a fleet, apart from Ray: its engine, its own admission, what it publishes.

``ray_app.EngineDeployment`` is a thin Ray Serve wrapper around this class, so everything a
replica decides is tested without a cluster. The replica runs the same ``LocalBackend`` as
the single-process server (admission on its own exact prefix cache and queue), keeps its
own SLO attainment and Prometheus series, and streams outputs in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from servewise.config import EngineConfig
from servewise.engine.async_engine import AsyncEngine
from servewise.engine.llm_engine import ModelInfo
from servewise.errors import OverloadedError
from servewise.fleet.messages import Accepted, OutputBatch, ReplicaMessage, ReplicaRequest, Shed
from servewise.fleet.stats import ReplicaStats
from servewise.server.backend import CallContext, LocalBackend, ReplicaReport
from servewise.server.metrics import ServerMetrics
from servewise.server.slo_runtime import SLOSettings, request_latencies
from servewise.slo import AdmissionController, MetricSample, Outcome, QueueOrder, SLOTracker
from servewise.types import FinishReason, RequestOutput, RequestTimings


@dataclass(frozen=True)
class ReplicaSettings:
    slo: SLOSettings  # classes and admission knobs, as given to `servewise serve`
    flush_interval_s: float = 0.015  # outputs are held at most this long to share one Ray message
    max_pending_keys: int = 512  # most recent keys published as "seen, waiting for a first token"
    rate_window_s: float = 10.0  # window of the admitted/shed rates given to the autoscaler
    burn_window: str = "1m"  # tracker window of the burn rate given to the autoscaler


@dataclass
class _Served:
    """What one request got so far (its attainment is recorded from it at the end)."""

    outcome: Outcome = Outcome.SERVER_ERROR  # until its last output says otherwise
    timings: RequestTimings | None = None
    num_tokens: int = 0


class ReplicaServer:
    def __init__(self, engine: AsyncEngine, config: EngineConfig, settings: ReplicaSettings,
                 replica_id: str) -> None:
        self.replica_id = replica_id
        self.settings = settings
        self.engine = engine
        self.admission = AdmissionController(settings.slo.admission_config(config.scheduler))
        self.backend = LocalBackend(engine, self.admission)
        self.scheduler_config = config.scheduler
        self.tracker = SLOTracker(settings.slo.slo_config)
        self.metrics = ServerMetrics(engine.model_info.name, lambda: engine.stats, self._samples,
                                     cpu_kernels=engine.model_info.cpu_kernels)
        self.accepting = True
        self._keys = itertools.count()
        # route key -> (class priority, admission key) of requests waiting for a first token
        self._pending: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._admitted_s: deque[float] = deque()
        self._shed_s: deque[float] = deque()
        self._prompt_tokens_ewma: float | None = None

    @property
    def model_info(self) -> ModelInfo:
        return self.engine.model_info

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.backend.start(loop)

    # -- serving --------------------------------------------------------------------------------
    async def generate(self, req: ReplicaRequest) -> AsyncIterator[ReplicaMessage]:
        """``Shed`` alone, or ``Accepted`` then ``OutputBatch`` es until the request finishes."""
        now = time.monotonic()
        arrival_s = now - max(req.age_s, 0.0)
        key = next(self._keys)
        try:
            predicted = self.backend.admit(key, [req.prompt_token_ids], req.slo_class)
        except OverloadedError as exc:
            self._shed_s.append(now)
            self.tracker.record(req.slo_class.name, Outcome.SHED)
            yield Shed(self.replica_id, exc.message, exc.retry_after_s, exc.reason)
            return
        self._admitted(req, key, now)
        served = _Served()
        try:
            yield Accepted(self.replica_id, predicted)
            ctx = CallContext(arrival_s=arrival_s, slo_class=req.slo_class, admission_key=key)
            stream = await self.backend.open_stream(req.request_id, req.prompt_token_ids, req.params, ctx)
            async with contextlib.aclosing(stream), contextlib.aclosing(self._batched(stream)) as batches:
                async for batch in batches:
                    for out in batch:
                        self._account(req, key, out, served)
                    yield OutputBatch(batch, time.monotonic())
        except (asyncio.CancelledError, GeneratorExit):
            served.outcome = Outcome.CLIENT_ERROR  # the ingress cancelled it: its client went away
            raise
        finally:
            self._pending.pop(req.route.key, None)
            self.backend.on_finished(key)
            ttft, tpot, e2e = request_latencies([served.timings] if served.timings else [], arrival_s,
                                                served.num_tokens)
            self.tracker.record(req.slo_class.name, served.outcome, ttft_s=ttft, tpot_s=tpot, e2e_s=e2e)

    def _account(self, req: ReplicaRequest, key: int, out: RequestOutput, served: _Served) -> None:
        served.timings = out.timings
        served.num_tokens += sum(len(c.token_ids) for c in out.outputs)
        if req.route.key in self._pending and any(c.token_ids for c in out.outputs):
            self._first_token(req.route.key, key, out)
        if out.finished:
            self._count_finish(out)
            served.outcome = Outcome.SERVER_ERROR if out.error else Outcome.SUCCESS

    def _admitted(self, req: ReplicaRequest, key: int, now: float) -> None:
        self._admitted_s.append(now)
        self._pending[req.route.key] = (req.slo_class.priority, key)
        while len(self._pending) > self.settings.max_pending_keys:
            self._pending.popitem(last=False)
        n = float(len(req.prompt_token_ids))
        self._prompt_tokens_ewma = n if self._prompt_tokens_ewma is None else 0.9 * self._prompt_tokens_ewma + 0.1 * n

    def _first_token(self, route_key: str, key: int, out: RequestOutput) -> None:
        self._pending.pop(route_key, None)
        t = out.timings
        if t.first_token_s is not None:
            self.backend.on_first_token(key, t.first_token_s - t.arrival_s)

    def _count_finish(self, out: RequestOutput) -> None:
        self.metrics.observe_request(out.timings, [c.token_times_s for c in out.outputs])
        for c in out.outputs:
            if c.finish_reason is not None:
                self.metrics.count_success(c.finish_reason.value)

    async def _batched(self, outputs: AsyncIterator[RequestOutput]) -> AsyncGenerator[list[RequestOutput], None]:
        """Engine outputs grouped so one message carries up to ``flush_interval_s`` of them; the first
        token and the end go out at once."""
        queue: asyncio.Queue[RequestOutput | BaseException | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for out in outputs:
                    queue.put_nowait(out)
            except BaseException as exc:  # forwarded: raised on the consumer's side
                queue.put_nowait(exc)
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(pump())
        batch: list[RequestOutput] = []
        held_since, first_token_sent = 0.0, False
        try:
            while True:
                timeout = None if not batch else max(0.0, held_since + self.settings.flush_interval_s - time.monotonic())
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except asyncio.TimeoutError:
                    yield batch
                    batch = []
                    continue
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                if not batch:
                    held_since = time.monotonic()
                batch.append(item)
                first_token = not first_token_sent and any(c.token_ids for c in item.outputs)
                first_token_sent = first_token_sent or first_token
                if item.finished or first_token:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- what it publishes ----------------------------------------------------------------------
    def routing_stats(self) -> dict[str, Any]:
        stats = self.engine.stats
        return ReplicaStats(
            replica_id=self.replica_id, cost=self.admission.cost_model.cost(),
            max_num_batched_tokens=self.scheduler_config.max_num_batched_tokens,
            max_num_seqs=self.scheduler_config.max_num_seqs,
            priority_order=self.admission.config.queue_order is QueueOrder.PRIORITY,
            queued_prefill_tokens=self.admission.tokens_by_priority(), pending=self._pending_tokens(),
            num_running=stats.num_running, num_waiting=stats.num_waiting, kv_cache_usage=stats.kv_cache_usage,
            num_kv_blocks=self.model_info.num_kv_blocks, block_size=self.model_info.block_size,
            recent_step_s=self.admission.recent_step_s(), step_target_s=self.admission.step_target_s(),
            accepting=self.accepting and self.backend.not_ready_reason(float("inf")) is None,
            published_s=time.time()).to_dict()

    def _pending_tokens(self) -> dict[str, tuple[int, int]]:
        pending = {}
        for route_key, (priority, key) in self._pending.items():
            tokens = self.admission.queued_tokens_of(key)
            if tokens is not None:
                pending[route_key] = (priority, tokens)
        return pending

    def autoscaling_stats(self) -> dict[str, float]:
        """Raw signals for ``autoscaling.ReplicaPressure.from_metrics`` (each ratio 1.0 = at the limit)."""
        self.admission.observe_steps(self.engine.stats.recent_steps)
        classes = self.settings.slo.slo_config.classes
        ttft_targets = [c for c in classes if c.ttft_s is not None]
        tightest = min(ttft_targets, key=lambda c: c.ttft_s or 0.0, default=None)
        out: dict[str, float] = {"ttft": 0.0, "tpot": 0.0, "queue": 0.0}
        if tightest is not None and tightest.ttft_s is not None:
            ref = int(self._prompt_tokens_ewma or 1)
            prediction = self.admission.predict(ref, tightest, num_running=self.engine.stats.num_running)
            out["ttft"] = prediction.ttft_s / tightest.ttft_s
            queued_s = self.admission.num_queued_prefill_tokens * self.admission.cost_model.cost().prefill_s_per_token
            out["queue"] = queued_s / tightest.ttft_s
        tpot_targets = [c.tpot_s for c in classes if c.tpot_s is not None]
        num_running = self.engine.stats.num_running
        if tpot_targets and num_running:
            # the decode steps it runs now, as the TPOT guard predicts them (prefill-heavy steps are sized
            # to the target by the step budget, so their length says nothing about decode capacity)
            decode_step_s = self.admission.cost_model.cost().step_s(0, num_running)
            out["tpot"] = decode_step_s / (min(tpot_targets) * self.admission.config.tpot_margin)
        windows = [self.tracker.window_stats(c.name, self.settings.burn_window) for c in classes]
        worst = max(windows, key=lambda w: w.burn_rate)
        c = worst.counts
        out["burn_rate"] = worst.burn_rate
        out["burn_requests"] = float(c.num_success + c.num_server_error + c.num_shed)
        out["admitted_rps"] = self._rate(self._admitted_s)
        out["shed_rps"] = self._rate(self._shed_s)
        return out

    def _rate(self, times: deque[float]) -> float:
        horizon = time.monotonic() - self.settings.rate_window_s
        while times and times[0] < horizon:
            times.popleft()
        return len(times) / self.settings.rate_window_s

    def check_health(self) -> None:
        """Raise (Ray then restarts the replica) when the engine loop is dead or stalled."""
        reason = self.backend.not_ready_reason(self.settings.slo.watchdog_timeout_s)
        if reason is not None:
            raise RuntimeError(f"replica {self.replica_id} is unhealthy: {reason}")

    def slo_snapshot(self) -> dict[str, Any]:
        return {"classes": self.tracker.snapshot(), "admission": self.admission.snapshot()}

    def report(self) -> ReplicaReport:
        return ReplicaReport(self.replica_id, self.metrics.render().decode(), self.slo_snapshot())

    def _samples(self) -> Iterator[MetricSample]:
        yield from self.tracker.metric_samples()
        yield from self.backend.metric_samples()

    def drain(self) -> None:
        """Stop being chosen (published at the next stats period); in-flight requests continue."""
        self.accepting = False

    def abort_all(self) -> None:
        self.engine.abort_all(FinishReason.DRAIN)
