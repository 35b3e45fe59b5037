"""What the HTTP layer runs requests on: one engine in this process, or a fleet of them.

The server is the same code either way (auth, validation, tokenization, SLO class, tenants,
usage). Past that it asks its ``Backend`` to admit a request (predict its TTFT, shed it when
its SLO would be missed anyway), to stream its outputs, and to say how it is doing. This
module has the local backend; ``servewise.fleet`` has the Ray Serve one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from servewise.engine.async_engine import AsyncEngine
from servewise.engine.llm_engine import ModelInfo
from servewise.engine.stats import EngineStats
from servewise.engine.structured import CompileResult
from servewise.loading.tokenizer import Tokenizer
from servewise.slo import AdmissionController, MetricSample, SLOClass
from servewise.types import FinishReason, GrammarSpec, RequestOutput, SamplingParams


@dataclass(frozen=True)
class CallContext:
    """One engine request's context besides its tokens and sampling parameters."""

    arrival_s: float  # monotonic time the server received the HTTP request
    slo_class: SLOClass  # the class it is served under (priority, deadline, admission targets)
    admission_key: int  # the key ``Backend.admit`` registered the request under


@dataclass(frozen=True)
class ReplicaReport:
    """One replica's own view, for /metrics and /v1/slo of a fleet (a local backend has none)."""

    replica: str  # replica id, the ``replica`` label of its series
    metrics_text: str  # its Prometheus text exposition
    slo: dict[str, Any] = field(default_factory=dict)  # its /v1/slo body


class Backend(Protocol):
    """Where generations run. Owned by the server's event loop."""

    tokenizer: Tokenizer
    model_info: ModelInfo

    @property
    def num_in_flight(self) -> int:
        """Engine requests accepted and not yet finished."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None: ...

    def shutdown(self) -> None: ...

    def not_ready_reason(self, watchdog_timeout_s: float) -> str | None:
        """Why /ready is 503 (dead, stalled, no replica), or None."""

    def stats(self) -> EngineStats:
        """Engine counters (summed over replicas in a fleet)."""

    def has_engine_series(self) -> bool:
        """Whether /metrics should export the engine gauges of ``stats()`` (a fleet's replicas do it)."""

    def validate_prompt(self, prompt: Sequence[int], params: SamplingParams) -> None:
        """Raise InvalidRequestError / ContextLengthError (400) if the request cannot be served."""

    async def compile_grammar(self, spec: GrammarSpec) -> CompileResult:
        """The output constraint compiled (cached); InvalidRequestError when it cannot be, or not in time."""

    def admit(self, key: int, prompts: Sequence[Sequence[int]], slo_class: SLOClass,
              session: str | None = None) -> float:
        """Predicted TTFT in seconds; raises OverloadedError (429) when the request is shed.
        ``session``: what keeps a client on one version during a fleet's rollout (None: none given)."""

    def on_first_token(self, key: int, ttft_s: float) -> None: ...

    def served_by(self, key: int) -> str | None:
        """The model version an admitted request goes to (a fleet's; None for one engine)."""

    def on_finished(self, key: int) -> None:
        """The request ended, however (call exactly once, in a finally)."""

    async def open_stream(self, request_id: str, prompt: Sequence[int], params: SamplingParams,
                          ctx: CallContext) -> AsyncGenerator[RequestOutput, None]:
        """The request's outputs, once it is accepted (OverloadedError / ServiceUnavailableError
        before that); leaving the generator early aborts it."""

    def abort_all(self, reason: FinishReason) -> None: ...

    def admission_snapshot(self) -> dict[str, Any]:
        """The ``admission`` part of /v1/slo."""

    def metric_samples(self) -> Iterator[MetricSample]: ...

    async def replica_reports(self) -> list[ReplicaReport]: ...


class LocalBackend:
    """The engine of this process, with predictive admission fed by its own steps."""

    def __init__(self, engine: AsyncEngine, admission: AdmissionController) -> None:
        self.engine = engine
        self.admission = admission
        self.tokenizer = engine.tokenizer
        self.model_info = engine.model_info

    @property
    def num_in_flight(self) -> int:
        return self.engine.num_in_flight

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.engine.start(loop)

    def shutdown(self) -> None:
        self.engine.shutdown()

    def not_ready_reason(self, watchdog_timeout_s: float) -> str | None:
        if not self.engine.is_running:
            return self.engine.dead_reason or "engine loop not running"
        return stall_reason(self.engine, watchdog_timeout_s)

    def stats(self) -> EngineStats:
        return self.engine.stats

    def has_engine_series(self) -> bool:
        return True

    def validate_prompt(self, prompt: Sequence[int], params: SamplingParams) -> None:
        self.engine.engine.validate_prompt(prompt, params)

    async def compile_grammar(self, spec: GrammarSpec) -> CompileResult:
        return await self.engine.compile_grammar(spec)

    def admit(self, key: int, prompts: Sequence[Sequence[int]], slo_class: SLOClass,
              session: str | None = None) -> float:
        # Prefill work the prefix cache already holds costs (almost) nothing: predict the rest.
        llm = self.engine.engine
        to_compute = sum(len(p) - llm.num_cached_prompt_tokens(p) for p in prompts)
        stats = self.engine.stats
        self.admission.observe_steps(stats.recent_steps)
        num_waiting = max(stats.num_waiting, self.engine.num_in_flight - stats.num_running)
        decision = self.admission.admit(key, to_compute, slo_class, num_running=stats.num_running,
                                        num_waiting=num_waiting)
        return decision.prediction.ttft_s

    def on_first_token(self, key: int, ttft_s: float) -> None:
        self.admission.on_first_token(key, ttft_s)

    def served_by(self, key: int) -> str | None:
        return None

    def on_finished(self, key: int) -> None:
        self.admission.on_finished(key)

    async def open_stream(self, request_id: str, prompt: Sequence[int], params: SamplingParams,
                          ctx: CallContext) -> AsyncGenerator[RequestOutput, None]:
        ttft_s = ctx.slo_class.ttft_s
        return self.engine.generate(request_id, prompt, params, priority=ctx.slo_class.priority,
                                    deadline_s=ctx.arrival_s + ttft_s if ttft_s is not None else None,
                                    tpot_s=ctx.slo_class.tpot_s, arrival_s=ctx.arrival_s)

    def abort_all(self, reason: FinishReason) -> None:
        self.engine.abort_all(reason)

    def admission_snapshot(self) -> dict[str, Any]:
        return self.admission.snapshot()

    def metric_samples(self) -> Iterator[MetricSample]:
        yield from self.admission.metric_samples()
        for reason, count in self.admission.num_shed.items():
            yield MetricSample("servewise:requests_shed_total", {"reason": reason.value}, float(count))

    async def replica_reports(self) -> list[ReplicaReport]:
        return []


def stall_reason(engine: AsyncEngine, timeout_s: float, now_s: float | None = None) -> str | None:
    """Why the engine is not making progress, or None: work waits and no step ended for timeout_s."""
    if engine.work_since_s is None:
        return None
    now = time.monotonic() if now_s is None else now_s
    last_step = engine.stats.last_step_end_s or 0.0
    quiet_s = now - max(last_step, engine.work_since_s)
    if quiet_s <= timeout_s:
        return None
    return (f"engine stalled: no step completed for {quiet_s:.1f} s with {engine.num_in_flight} requests "
            f"in flight (watchdog timeout {timeout_s:g} s)")
