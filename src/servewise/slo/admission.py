"""Predictive admission: shed a request now when its SLO would be missed anyway.

Prediction of a new request's TTFT, before it is queued:

- ``ahead``: prompt tokens of admitted requests whose first token has not come yet
  (under ``QueueOrder.PRIORITY`` only those of classes at least as urgent), tracked
  here through ``on_admitted`` / ``on_first_token`` / ``on_finished``;
- the engine computes the running decodes first, one token each, and fills the
  rest of the step with up to ``P(D)`` prompt tokens, the step budget of
  ``slo/step_budget.py``: ``B - D`` (``B = max_num_batched_tokens``) when no request
  in flight has a TPOT target, else what keeps the step within their tightest TPOT
  × margin. The ``ahead + prompt`` tokens take ``n = ceil((ahead + prompt) / P(D))``
  steps;
- each step costs ``a + b·prefill + c·D`` (``StepCostModel``), so
  ``ttft ≈ n·(a + c·D) + b·(ahead + prompt)``.

The server passes the prompt tokens the prefix cache does not hold at admission
(``LLMEngine.num_cached_prompt_tokens``). Not modelled: prefixes that a request still
in prefill will have cached by the time this one runs, decodes that start while
the request waits, the rest of the step in progress, and a full running batch
(``max_num_seqs``) holding it back.
Prediction error is measured (``observe_ttft``) so these show up on the dashboard.

TPOT guard: one more sequence makes every decode step ``a + c·(D + 1)``; when that
exceeds the class's ``tpot_s × margin`` the request is shed (never on an idle engine, nor
when even one sequence's steps miss the target).
It predicts the next steps from the fitted cost, so it forgets a burst as soon as the
burst's streams are gone (an average of recent steps held it against new requests).

Decision (first that applies): request cap, TPOT guard, token cap, max queue wait, TTFT
target × slack. A request is only shed when there is a backlog ahead of it that waiting
would clear: one that would miss its target even on an idle engine is admitted.
Retry-After = predicted time for the backlog ahead to clear, at least 1 s.
"""

from __future__ import annotations

import enum
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from servewise.config import SchedulerConfig
from servewise.errors import OverloadedError
from servewise.slo.cost_model import CostModelConfig, StepCost, StepCostModel, StepTiming
from servewise.slo.prediction_error import PredictionErrorStats
from servewise.slo.samples import PREFIX, MetricSample
from servewise.slo.spec import SLOClass
from servewise.slo.step_budget import DEFAULT_MIN_PREFILL_TOKENS, prefill_budget, step_target_for


class AdmissionMode(str, enum.Enum):
    ENFORCE = "enforce"  # shed requests predicted to miss their SLO
    OBSERVE = "observe"  # "admission off": predict and count would-be sheds, admit everything


class QueueOrder(str, enum.Enum):
    """The engine's waiting-queue policy (``SchedulerConfig.queue_policy``)."""

    FCFS = "fcfs"  # every queued prompt is ahead of a new request
    PRIORITY = "priority"  # only prompts of classes with priority ≤ the new request's


class ShedReason(str, enum.Enum):
    """Stable labels (``reason`` of OverloadedError and of the shed metrics)."""

    QUEUE_REQUESTS = "queue_requests"  # the engine's waiting queue is at the request cap
    QUEUE_TOKENS = "queue_tokens"  # queued prefill tokens would exceed the token cap
    QUEUE_WAIT = "queue_wait"  # predicted wait before prefill > the class's max_queue_wait_s
    TTFT_SLO = "ttft_slo"  # predicted TTFT > the class's ttft_s × admission_slack
    TPOT_SLO = "tpot_slo"  # steps are already too slow for the class's tpot_s with one more sequence


@dataclass(frozen=True)
class AdmissionConfig:
    mode: AdmissionMode = AdmissionMode.ENFORCE
    max_num_batched_tokens: int = 512  # the engine's per-step token budget (chunked prefill)
    queue_order: QueueOrder = QueueOrder.FCFS
    max_queued_prefill_tokens: int | None = None  # cap on prompt tokens waiting for prefill; None = none
    max_num_waiting_requests: int | None = None  # cap on the engine's waiting queue; None = none
    min_retry_after_s: float = 1.0  # floor of Retry-After
    # recent_step_s (what running requests experienced, for reports) averages steps over this window.
    tpot_window_s: float = 3.0
    # Steps aim at tpot_s × this margin: the TPOT guard's limit and the step budget's target.
    tpot_margin: float = 0.9
    # The engine sizes steps by the SLO (SchedulerConfig.step_budget == "slo"): prefill per step shrinks
    # under decode load to keep steps within the tightest TPOT in flight; False = the fixed B - D.
    slo_step_budget: bool = True
    min_prefill_tokens: int = DEFAULT_MIN_PREFILL_TOKENS  # SchedulerConfig.min_prefill_chunk_tokens
    cost_model: CostModelConfig = field(default_factory=CostModelConfig)
    error_window: int = 1024  # predictions kept for the error statistics

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be ≥ 1")
        for attr in ("max_queued_prefill_tokens", "max_num_waiting_requests"):
            value = getattr(self, attr)
            if value is not None and value < 1:
                raise ValueError(f"{attr} must be ≥ 1 or None, got {value!r}")
        if not self.min_retry_after_s >= 1.0:
            raise ValueError("min_retry_after_s must be ≥ 1 (Retry-After is whole seconds)")
        if self.error_window < 1:
            raise ValueError("error_window must be ≥ 1")
        if not (self.tpot_window_s > 0 and 0 < self.tpot_margin <= 1):
            raise ValueError("tpot_window_s must be > 0 and tpot_margin in (0, 1]")
        if self.min_prefill_tokens < 1:
            raise ValueError("min_prefill_tokens must be ≥ 1")

    @classmethod
    def for_scheduler(cls, scheduler: SchedulerConfig, **kwargs: Any) -> AdmissionConfig:
        """Budget rule and queue order taken from the engine's scheduler config."""
        return cls(max_num_batched_tokens=scheduler.max_num_batched_tokens,
                   queue_order=QueueOrder(scheduler.queue_policy), tpot_margin=scheduler.step_tpot_margin,
                   slo_step_budget=scheduler.step_budget == "slo",
                   min_prefill_tokens=scheduler.min_prefill_chunk_tokens, **kwargs)


@dataclass(frozen=True)
class TTFTPrediction:
    ttft_s: float  # predicted time from now to the request's first token
    queue_wait_s: float  # predicted time to clear the prefill backlog ahead of it
    num_prefill_tokens_ahead: int  # queued prompt tokens that go before it
    num_steps: int  # engine steps until its prefill completes


@dataclass(frozen=True)
class AdmissionDecision:
    admitted: bool
    prediction: TTFTPrediction
    slo_class: str
    # Why it was shed; in OBSERVE mode why it would have been (then admitted is True).
    shed_reason: ShedReason | None
    retry_after_s: float | None  # set when shed: ≥ min_retry_after_s; the server rounds it up
    message: str | None  # for the client when shed

    def to_error(self) -> OverloadedError:
        assert self.shed_reason is not None and self.retry_after_s is not None and self.message is not None
        return OverloadedError(self.message, retry_after_s=self.retry_after_s, reason=self.shed_reason.value)


def prefill_time_s(num_tokens: int, num_running: int, max_num_batched_tokens: int, cost: StepCost,
                   step_target_s: float | None = None,
                   min_prefill_tokens: int = DEFAULT_MIN_PREFILL_TOKENS) -> tuple[float, int]:
    """Seconds and engine steps to prefill ``num_tokens`` with ``num_running`` decodes in every step:
    ``n = ceil(tokens / P(D))`` steps of ``a + c·D`` each, plus ``b·tokens``, where ``P(D)`` is the
    step budget's prompt share (``prefill_budget``; ``B - D`` without a step target)."""
    if num_tokens <= 0:
        return 0.0, 0
    budget = max_num_batched_tokens
    num_decodes = min(max(num_running, 0), budget - 1) if budget > 1 else 0
    per_step = max(prefill_budget(num_decodes, budget, cost, step_target_s, min_prefill_tokens), 1)
    num_steps = math.ceil(num_tokens / per_step)
    seconds = num_steps * (cost.step_overhead_s + cost.decode_s_per_token * num_decodes)
    return seconds + cost.prefill_s_per_token * num_tokens, num_steps


def predict_ttft(cost: StepCost, max_num_batched_tokens: int, tokens_ahead: int, prompt_tokens: int,
                 num_running: int, *, step_target_s: float | None = None,
                 min_prefill_tokens: int = DEFAULT_MIN_PREFILL_TOKENS) -> TTFTPrediction:
    """The admission formula (module docstring), a pure function: the fleet router scores each
    replica with it, and the planner and the admission controller share it.

    step_target_s: the tightest TPOT in flight × margin when the engine sizes its steps by it
    (``SchedulerConfig.step_budget == "slo"``), else None."""
    wait_s, _ = prefill_time_s(tokens_ahead, num_running, max_num_batched_tokens, cost, step_target_s,
                               min_prefill_tokens)
    ttft_s, num_steps = prefill_time_s(tokens_ahead + max(prompt_tokens, 1), num_running,
                                       max_num_batched_tokens, cost, step_target_s, min_prefill_tokens)
    return TTFTPrediction(ttft_s=ttft_s, queue_wait_s=wait_s, num_prefill_tokens_ahead=tokens_ahead,
                          num_steps=num_steps)


@dataclass
class _Pending:
    prompt_tokens: int
    priority: int
    tpot_s: float | None  # its class's TPOT target
    predicted_ttft_s: float | None
    admitted_s: float  # clock time at admission
    waiting_for_first_token: bool = True


class AdmissionController:
    """Predicts TTFT and sheds; owned by the server's event loop (not thread-safe)."""

    def __init__(self, config: AdmissionConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or AdmissionConfig()
        self._clock = clock
        self.cost_model = StepCostModel(self.config.cost_model)
        self.errors = PredictionErrorStats(self.config.error_window)
        self._pending: dict[Hashable, _Pending] = {}
        self._tokens_by_priority: Counter[int] = Counter()  # prompt tokens waiting for a first token
        self._tpot_targets: Counter[float] = Counter()  # TPOT targets of the requests in flight
        self.num_admitted = 0
        self.num_shed: Counter[ShedReason] = Counter()
        self.num_would_shed: Counter[ShedReason] = Counter()  # OBSERVE mode
        self._recent_steps: deque[tuple[float, float]] = deque(maxlen=1024)  # (end_s, duration_s)

    # -- inputs -------------------------------------------------------------------------
    def observe_steps(self, steps: Iterable[StepTiming]) -> int:
        """Feed the engine's recent steps (``EngineStats.recent_steps``); repeats are skipped."""
        steps = list(steps)
        last_end = self._recent_steps[-1][0] if self._recent_steps else -math.inf
        self._recent_steps.extend((s.end_s, s.duration_s) for s in steps if s.end_s > last_end)
        return self.cost_model.observe_new(steps)

    def recent_step_s(self) -> float | None:
        """Mean engine step over the last tpot_window_s: the time per output token running
        requests get now. None when the engine ran no step in the window."""
        since = self._clock() - self.config.tpot_window_s
        durations = [d for end, d in self._recent_steps if end >= since]
        return sum(durations) / len(durations) if durations else None

    def on_admitted(self, request_key: Hashable, prompt_tokens: int, slo_class: SLOClass,
                    predicted_ttft_s: float | None = None) -> None:
        """The request was queued: its prompt is now ahead of later requests."""
        if request_key in self._pending:
            raise ValueError(f"request {request_key!r} admitted twice")
        self._pending[request_key] = _Pending(prompt_tokens, slo_class.priority, slo_class.tpot_s, predicted_ttft_s,
                                              self._clock())
        self._tokens_by_priority[slo_class.priority] += prompt_tokens
        if slo_class.tpot_s is not None:
            self._tpot_targets[slo_class.tpot_s] += 1

    def on_first_token(self, request_key: Hashable, ttft_s: float | None = None) -> None:
        """Its prefill is done. ``ttft_s`` (the engine's measurement) defaults to the time since
        admission; the prediction made at admission is scored against it."""
        p = self._pending.get(request_key)
        if p is None or not p.waiting_for_first_token:
            return
        self._release_tokens(p)
        if p.predicted_ttft_s is not None:
            self.observe_ttft(p.predicted_ttft_s, ttft_s if ttft_s is not None else self._clock() - p.admitted_s)

    def on_finished(self, request_key: Hashable) -> None:
        """Finished, failed or aborted (call it in a ``finally``): forget the request."""
        p = self._pending.pop(request_key, None)
        if p is None:
            return
        if p.waiting_for_first_token:
            self._release_tokens(p)
        if p.tpot_s is not None:
            self._tpot_targets[p.tpot_s] -= 1
            if self._tpot_targets[p.tpot_s] <= 0:
                del self._tpot_targets[p.tpot_s]

    def observe_ttft(self, predicted_s: float, actual_s: float) -> None:
        self.errors.observe(predicted_s, actual_s)

    def _release_tokens(self, p: _Pending) -> None:
        p.waiting_for_first_token = False
        self._tokens_by_priority[p.priority] -= p.prompt_tokens
        if self._tokens_by_priority[p.priority] <= 0:
            del self._tokens_by_priority[p.priority]

    # -- prediction and decision ----------------------------------------------------------
    @property
    def num_queued_prefill_tokens(self) -> int:
        return sum(self._tokens_by_priority.values())

    def _tokens_ahead(self, priority: int) -> int:
        if self.config.queue_order is QueueOrder.FCFS:
            return self.num_queued_prefill_tokens
        return sum(n for p, n in self._tokens_by_priority.items() if p <= priority)

    def queued_tokens_of(self, request_key: Hashable) -> int | None:
        """Prompt tokens this request has queued for prefill; None once past its first token."""
        p = self._pending.get(request_key)
        return p.prompt_tokens if p is not None and p.waiting_for_first_token else None

    def tokens_by_priority(self) -> dict[int, int]:
        """Prompt tokens admitted and waiting for their first token, by class priority."""
        return dict(self._tokens_by_priority)

    def step_target_s(self) -> float | None:
        """What the engine's steps aim at while the requests in flight run: their tightest TPOT × margin
        (None without a target, or when the engine's step budget is fixed)."""
        if not self.config.slo_step_budget:
            return None
        return step_target_for(self._tpot_targets, self.config.tpot_margin)

    def predict(self, prompt_tokens: int, slo_class: SLOClass, *, num_running: int) -> TTFTPrediction:
        """Predicted TTFT of a request of ``prompt_tokens`` if it were queued now."""
        return predict_ttft(self.cost_model.cost(), self.config.max_num_batched_tokens,
                            self._tokens_ahead(slo_class.priority), prompt_tokens, num_running,
                            step_target_s=self.step_target_s(), min_prefill_tokens=self.config.min_prefill_tokens)

    def _shed_reason(self, pred: TTFTPrediction, prompt_tokens: int, slo: SLOClass, num_running: int,
                     num_waiting: int) -> tuple[ShedReason, str] | None:
        c = self.config
        ahead = pred.num_prefill_tokens_ahead
        if c.max_num_waiting_requests is not None and num_waiting >= c.max_num_waiting_requests:
            return ShedReason.QUEUE_REQUESTS, f"{num_waiting} requests are waiting (cap {c.max_num_waiting_requests})"
        tpot = self._tpot_overload(slo, num_running)
        if tpot is not None:
            return ShedReason.TPOT_SLO, tpot
        if ahead == 0:
            return None  # nothing to wait out: shedding would not help this request
        if c.max_queued_prefill_tokens is not None and ahead + prompt_tokens > c.max_queued_prefill_tokens:
            return ShedReason.QUEUE_TOKENS, (f"{ahead} prompt tokens are queued; {prompt_tokens} more would exceed "
                                             f"the cap of {c.max_queued_prefill_tokens}")
        if slo.max_queue_wait_s is not None and pred.queue_wait_s > slo.max_queue_wait_s:
            return ShedReason.QUEUE_WAIT, (f"predicted queue wait {pred.queue_wait_s:.2f} s exceeds the class's "
                                           f"max {slo.max_queue_wait_s:g} s")
        if slo.ttft_s is not None and pred.ttft_s > slo.ttft_s * slo.admission_slack:
            return ShedReason.TTFT_SLO, (f"predicted time to first token {pred.ttft_s:.2f} s exceeds "
                                         f"{slo.ttft_s * slo.admission_slack:.2f} s (target {slo.ttft_s:g} s × "
                                         f"slack {slo.admission_slack:g})")
        return None

    def _tpot_overload(self, slo: SLOClass, num_running: int) -> str | None:
        """Why one more sequence would push decode steps past the class's TPOT target: the next steps,
        ``num_running + 1`` decodes by the fitted cost. Never on an idle engine, nor when a lone
        sequence's steps already miss the target: shedding cannot help then."""
        if slo.tpot_s is None or num_running == 0:
            return None
        cost = self.cost_model.cost()
        predicted = cost.step_s(0, num_running + 1)
        limit = slo.tpot_s * self.config.tpot_margin
        if predicted <= limit or cost.step_s(0, 1) > limit:
            return None
        return (f"with {num_running + 1} sequences a decode step would take {predicted * 1e3:.0f} ms, over "
                f"{limit * 1e3:.0f} ms (time per output token target {slo.tpot_s * 1e3:g} ms × margin "
                f"{self.config.tpot_margin:g})")

    def decide(self, prompt_tokens: int, slo_class: SLOClass, *, num_running: int,
               num_waiting: int) -> AdmissionDecision:
        """Admit or shed, without registering the request; counts the decision."""
        pred = self.predict(prompt_tokens, slo_class, num_running=num_running)
        found = self._shed_reason(pred, prompt_tokens, slo_class, num_running, num_waiting)
        if found is None:
            self.num_admitted += 1
            return AdmissionDecision(True, pred, slo_class.name, None, None, None)
        reason, why = found
        if self.config.mode is AdmissionMode.OBSERVE:
            self.num_admitted += 1
            self.num_would_shed[reason] += 1
            return AdmissionDecision(True, pred, slo_class.name, reason, None, None)
        self.num_shed[reason] += 1
        retry_after_s = max(self.config.min_retry_after_s, pred.queue_wait_s)
        message = (f"server overloaded for SLO class {slo_class.name!r}: {why}; "
                   f"retry after {math.ceil(retry_after_s)} s")
        return AdmissionDecision(False, pred, slo_class.name, reason, retry_after_s, message)

    def admit(self, request_key: Hashable, prompt_tokens: int, slo_class: SLOClass, *, num_running: int,
              num_waiting: int) -> AdmissionDecision:
        """``decide`` then ``on_admitted``; raises OverloadedError (429) when shed."""
        decision = self.decide(prompt_tokens, slo_class, num_running=num_running, num_waiting=num_waiting)
        if not decision.admitted:
            raise decision.to_error()
        self.on_admitted(request_key, prompt_tokens, slo_class, decision.prediction.ttft_s)
        return decision

    # -- outputs ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        cost = self.cost_model.cost()
        return {
            "mode": self.config.mode.value,
            "cost_model": {**asdict(cost), "num_steps_observed": self.cost_model.num_steps},
            "queue": {"num_waiting_for_first_token": sum(p.waiting_for_first_token for p in self._pending.values()),
                      "num_queued_prefill_tokens": self.num_queued_prefill_tokens},
            "decisions": {"admitted": self.num_admitted,
                          "shed": {r.value: n for r, n in self.num_shed.items()},
                          "would_shed": {r.value: n for r, n in self.num_would_shed.items()}},
            "prediction_error": asdict(self.errors.summary()),
        }

    def metric_samples(self) -> Iterator[MetricSample]:
        """Prediction error gauges (``stat`` = mean_abs | mean_signed | p90_abs), the fitted step cost,
        the queued prefill tokens, and would-be sheds of OBSERVE mode by reason."""
        s = self.errors.summary()
        for stat, value in (("mean_abs", s.mean_abs_error_s), ("mean_signed", s.mean_signed_error_s),
                            ("p90_abs", s.p90_abs_error_s)):
            if value is not None:
                yield MetricSample(PREFIX + "admission_predicted_ttft_error_seconds", {"stat": stat}, value)
        cost = self.cost_model.cost()
        for term, value in (("step", cost.step_overhead_s), ("prefill_token", cost.prefill_s_per_token),
                            ("decode_token", cost.decode_s_per_token)):
            yield MetricSample(PREFIX + "admission_step_cost_seconds", {"term": term}, value)
        yield MetricSample(PREFIX + "admission_queued_prefill_tokens", {}, float(self.num_queued_prefill_tokens))
        for reason in ShedReason:
            yield MetricSample(PREFIX + "admission_would_shed_total", {"reason": reason.value},
                               float(self.num_would_shed[reason]))
