"""The fleet's backend at the ingress: fleet admission, routing, retries, failover, versions.

The ingress runs the same FastAPI app as `servewise serve`; only its ``Backend`` differs.
Per engine request:

0. version: the baseline's replicas, unless a rollout sends this session to the candidate;

1. admission: the router scores every replica; 429 when even the best would miss the
   class's TTFT target × slack (``FleetRouter.admit``);
2. send: Ray Serve's request router (``ray_router.py``) picks the best-scored replica;
3. the replica's own admission may still shed it (it knows its queue exactly): the request
   is retried once on the next-best replica, then the client gets the 429;
4. a replica that dies or cannot be reached before any output reached the client: the
   request goes to another replica (up to ``max_failovers`` times); after that, or once
   output has gone out, the request fails with ``ReplicaLostError`` (a stream ends with an
   SSE error event naming the cause, never a silent truncation).

Ray is not imported here: the Ray glue (``ray_engines.py``) gives each version's ``send`` and
turns Ray's errors into ``ReplicaFailure``. ``fleet_call.py`` is one request's way through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from servewise.config import StructuredOutputConfig
from servewise.engine.kv_cache_manager import chain_hashes
from servewise.engine.llm_engine import ModelInfo, check_prompt
from servewise.engine.stats import EngineStats
from servewise.engine.structured import CompileResult, GrammarCompiler
from servewise.errors import OverloadedError
from servewise.fleet.fleet_call import FleetCall, ReplicaFailure, VersionTarget
from servewise.fleet.rollout_window import Finished, RequestOutcome
from servewise.fleet.router_core import FleetRouter
from servewise.fleet.shadow import ShadowPair
from servewise.fleet.stats import RouteInfo
from servewise.loading.tokenizer import Tokenizer
from servewise.server.backend import CallContext, ReplicaReport
from servewise.slo import MetricSample, SLOClass
from servewise.types import FinishReason, GrammarSpec, RequestOutput, SamplingParams

logger = logging.getLogger("servewise.fleet")

__all__ = ["FleetBackend", "IngressSettings", "ReplicaFailure", "RolloutHooks", "VersionTarget"]


@dataclass(frozen=True)
class IngressSettings:
    max_failovers: int = 2  # times a request that has not started goes to another replica after a failure
    max_shed_retries: int = 1  # times a request a replica shed goes to the next-best replica


class RolloutHooks(Protocol):
    """What a rollout (``rollout_runtime.py``) needs from the requests going through."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None: ...

    def stop(self) -> None: ...

    def metric_samples(self) -> Iterator[MetricSample]: ...

    def version_for(self, session: str | None) -> str | None:
        """The version this session goes to (None: the baseline)."""

    def on_finished(self, record: Finished) -> None:
        """A user's request ended (served, failed or shed) on ``record.version``."""

    def mirror_to(self, served_by: str) -> str | None:
        """Shadow: the version to mirror a request ``served_by`` serves to, or None (not sampled)."""

    def on_mirrored(self, pair: ShadowPair | None) -> None:
        """A mirrored request ended (None: skipped, the candidate was too busy)."""


class FleetBackend:
    def __init__(self, tokenizer: Tokenizer, model_info: ModelInfo, baseline: VersionTarget,
                 settings: IngressSettings | None = None,
                 structured: StructuredOutputConfig | None = None) -> None:
        self.tokenizer = tokenizer
        self.model_info = model_info
        self._structured = structured or StructuredOutputConfig()
        self._grammars: GrammarCompiler | None = None  # built on the first constrained request
        self.settings = settings or IngressSettings()
        self.versions: dict[str, VersionTarget] = {baseline.name: baseline}
        self.baseline = baseline.name
        self.rollout: RolloutHooks | None = None
        self._version_of: dict[int, str] = {}  # admission key -> version, until the request ends
        self._tasks: set[asyncio.Task[Any]] = set()  # shadow requests in flight
        self.num_in_flight = 0
        self.num_failovers = 0
        self.num_cut_streams = 0
        self.num_shed_retries = 0

    # -- versions -----------------------------------------------------------------------------
    @property
    def router(self) -> FleetRouter:
        """The baseline's routing state."""
        return self.versions[self.baseline].router

    def add_version(self, target: VersionTarget) -> None:
        self.versions[target.name] = target

    def remove_version(self, name: str) -> None:
        if name != self.baseline:
            self.versions.pop(name, None)

    def set_baseline(self, name: str) -> None:
        self.baseline = name

    def _target(self, name: str | None) -> VersionTarget:
        return self.versions.get(name or self.baseline) or self.versions[self.baseline]

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.rollout is not None:  # (the replicas run engines, Ray runs the routing loop)
            self.rollout.start(loop)

    def shutdown(self) -> None:
        if self.rollout is not None:
            self.rollout.stop()
        for task in self._tasks:
            task.cancel()

    def not_ready_reason(self, watchdog_timeout_s: float) -> str | None:
        if not any(s.accepting for s in self.router.replica_stats()):
            return "no engine replica is ready"
        return None

    def stats(self) -> EngineStats:
        replicas = [s for v in self.versions.values() for s in v.router.replica_stats()]
        return EngineStats(num_running=sum(s.num_running for s in replicas),
                           num_waiting=sum(s.num_waiting for s in replicas),
                           kv_cache_usage=max((s.kv_cache_usage for s in replicas), default=0.0))

    def has_engine_series(self) -> bool:
        return False

    # -- admission ----------------------------------------------------------------------------
    def validate_prompt(self, prompt: Sequence[int], params: SamplingParams) -> None:
        check_prompt(self.model_info, prompt, params)

    def route_info(self, router: FleetRouter, key: str, prompt: Sequence[int], slo_class: SLOClass,
                   exclude: frozenset[str] = frozenset()) -> RouteInfo:
        block = self.model_info.block_size
        num_blocks = min(len(prompt) // block, router.config.max_prefix_blocks)
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

    def admit(self, key: int, prompts: Sequence[Sequence[int]], slo_class: SLOClass,
              session: str | None = None) -> float:
        target = self._target(self.rollout.version_for(session) if self.rollout else None)
        self._version_of[key] = target.name
        predicted = 0.0
        for i, prompt in enumerate(prompts):
            try:
                best = target.router.admit(self.route_info(target.router, f"admit-{key}-{i}", prompt, slo_class),
                                           slo_class)
            except OverloadedError:
                self._record(target.name, RequestOutcome.SHED)
                raise
            predicted = max(predicted, best.ttft_s if best is not None else 0.0)
        return predicted

    def on_first_token(self, key: int, ttft_s: float) -> None:
        """Nothing to do at the ingress, by design: the fleet has no ingress-side admission queue
        to release. Each engine request's router already learns its own first token, with the
        replica that served it (``FleetCall`` → ``FleetRouter.on_first_token``), which the
        single-server hook could not tell."""

    def served_by(self, key: int) -> str | None:
        return self._version_of.get(key)

    def on_finished(self, key: int) -> None:
        self._version_of.pop(key, None)

    # -- serving ------------------------------------------------------------------------------
    async def open_stream(self, request_id: str, prompt: Sequence[int], params: SamplingParams,
                          ctx: CallContext) -> AsyncGenerator[RequestOutput, None]:
        target = self._target(self._version_of.get(ctx.admission_key))
        call = FleetCall(self, target, request_id, prompt, params, ctx)
        self.num_in_flight += 1
        try:
            await call.accept()
        except BaseException:
            await call.close()
            raise
        mirror = self.rollout.mirror_to(target.name) if self.rollout else None
        if mirror is not None and mirror in self.versions and params.n == 1:
            self._mirror(call, self.versions[mirror])
        return call.outputs()

    def call_closed(self, call: FleetCall) -> None:
        """An engine request ended (FleetCall.close)."""
        call.target.router.on_finished(call.request_id)
        if call.mirror:
            return
        self.num_in_flight -= 1
        if call.outcome is not None:
            self._record(call.target.name, call.outcome, call)

    def _record(self, version: str, outcome: RequestOutcome, call: FleetCall | None = None) -> None:
        if self.rollout is None:
            return
        ttft, tpot = (call.ttft_s, call.tpot_s) if call is not None else (None, None)
        met = False
        if call is not None and outcome is RequestOutcome.SERVED:
            e2e = (call.last_token_s or call.first_token_s or 0.0) - call.ctx.arrival_s
            met = call.ctx.slo_class.is_met(ttft, tpot, e2e)
        self.rollout.on_finished(Finished(time.time(), version, outcome, met, ttft, tpot))

    def _mirror(self, call: FleetCall, target: VersionTarget) -> None:
        """Shadow: the same request on ``target``, answer discarded, never counted as the user's."""
        route = self.route_info(target.router, call.request_id, call.prompt, call.ctx.slo_class)
        ranked = target.router.rank(route)
        ttft_target = call.ctx.slo_class.ttft_s
        if ranked and ttft_target is not None and ranked[0].ttft_s > ttft_target:  # busy: mirroring goes first
            assert self.rollout is not None
            self.rollout.on_mirrored(None)
            return
        task = asyncio.create_task(run_shadow(self, call, target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def abort_all(self, reason: FinishReason) -> None:
        """Not implemented at the ingress (a known gap): a drain that times out here does not cut the
        fleet's streams. They end when Ray stops the engine replicas, each of which drains and then
        ends its requests with ``reason`` DRAIN (``EngineDeployment.__del__`` → ``abort_all``), so
        clients get a finished stream, later than the ingress's drain timeout."""
        logger.warning("drain timeout at the fleet ingress: %d streams continue until their engine replicas "
                       "stop (the ingress cannot cut them)", self.num_in_flight)

    # -- reporting ----------------------------------------------------------------------------
    def admission_snapshot(self) -> dict[str, Any]:
        return {**self.router.snapshot(), "failovers": self.num_failovers, "cut_streams": self.num_cut_streams,
                "shed_retries": self.num_shed_retries, "versions": sorted(self.versions), "baseline": self.baseline}

    def metric_samples(self) -> Iterator[MetricSample]:
        for name, target in self.versions.items():
            for sample in target.router.metric_samples():
                yield sample if len(self.versions) == 1 else sample_with(sample, version=name)
        replicas = [s for v in self.versions.values() for s in v.router.replica_stats()]
        num_accepting = sum(s.accepting for s in replicas)
        yield MetricSample("servewise:fleet_replicas", {"state": "accepting"}, float(num_accepting))
        yield MetricSample("servewise:fleet_replicas", {"state": "not_accepting"}, float(len(replicas) - num_accepting))
        yield MetricSample("servewise:router_failovers_total", {}, float(self.num_failovers))
        yield MetricSample("servewise:router_cut_streams_total", {}, float(self.num_cut_streams))
        yield MetricSample("servewise:router_shed_retries_total", {}, float(self.num_shed_retries))
        if self.rollout is not None:
            yield from self.rollout.metric_samples()

    async def replica_reports(self) -> list[ReplicaReport]:
        reports = await asyncio.gather(*(v.reports() for v in self.versions.values()))
        return [r for batch in reports for r in batch]


def sample_with(sample: MetricSample, **labels: str) -> MetricSample:
    return MetricSample(sample.name, {**sample.labels, **labels}, sample.value)


async def run_shadow(fleet: FleetBackend, user_call: FleetCall, target: VersionTarget) -> None:
    """A mirrored request: runs beside the user's, compared when both ended."""
    assert fleet.rollout is not None
    ctx = CallContext(arrival_s=time.monotonic(), slo_class=user_call.ctx.slo_class, admission_key=-1)
    shadow = FleetCall(fleet, target, f"{user_call.request_id}-shadow", user_call.prompt, user_call.params, ctx,
                       mirror=True)
    try:
        await shadow.accept()
        async for _ in shadow.outputs():
            pass
    except OverloadedError:  # the candidate shed it: mirroring is the first thing to go under load
        fleet.rollout.on_mirrored(None)
        return
    except Exception as exc:  # the mirrored request failed: the candidate's error, never the user's
        logger.warning("shadow request %s failed on %s: %s", shadow.request_id, target.name, exc)
        shadow.outcome = RequestOutcome.ERROR
    finally:
        await shadow.close()
    await user_call.done.wait()
    if user_call.outcome is not RequestOutcome.SERVED:
        return  # nothing to compare against
    fleet.rollout.on_mirrored(ShadowPair(
        greedy=user_call.params.temperature == 0, baseline_tokens=user_call.token_ids,
        candidate_tokens=shadow.token_ids, baseline_ttft_s=user_call.ttft_s, candidate_ttft_s=shadow.ttft_s,
        baseline_tpot_s=user_call.tpot_s, candidate_tpot_s=shadow.tpot_s,
        candidate_error=shadow.outcome is not RequestOutcome.SERVED))
