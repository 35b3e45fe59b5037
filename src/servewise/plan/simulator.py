"""Discrete-event simulation of a fleet of engines on a simulated clock.

Each replica is built the way the server builds its engine: the engine's own
``Scheduler``, ``KVCacheManager`` and queue policy, and the slo layer's
``AdmissionController`` fed the engine's step records. Two things are replaced:

- the model runner, by the step-cost model: a step of shape S that starts at t ends at
  ``t + forward_s(S) + host_s(S)`` (the engine records ``forward_s`` as its duration);
- sampling, by the workload's output lengths: a sequence whose chunk reaches its last
  token gets one token, until it has ``max_tokens`` (or reaches the context length).

Timeline, as in AsyncEngine's loop: a step starts when the previous one ends, or on an
idle engine when a request is queued; requests queued before a step starts join it; its
tokens reach clients when it ends. A request is sent at its send time, reaches admission
``ingress_s`` later (chat template, tokenizer), and is admitted or shed against the stats
the engine published at its last step end, as the server does. Clients are the bench's:
open loop (with its concurrency cap) or closed loop. Replicas share the clock; the fleet
routes each request (``routing.py``).

The server's own work (HTTP, SSE, the client on the same cores) enters only through the
profile's serving calibration (``serving.py``): every step scaled, and
each request's stream shifted as its first token is.

Not modelled: EOS and stop strings (outputs run to max_tokens), n > 1, client timeouts
and aborts, tenants' rate limits, and what ``routing.py`` lists for fleets.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field

import torch

from servewise.bench.records import Outcome, RequestRecord
from servewise.bench.schedule import LoadConfig, LoadMode, LoadPoint
from servewise.engine.kv_cache_manager import KVCacheManager
from servewise.engine.request import Request
from servewise.engine.scheduler import ScheduleOutput, Scheduler
from servewise.engine.stats import StepRecord
from servewise.errors import OverloadedError
from servewise.plan.knobs import EngineSpec
from servewise.plan.profile import ProfiledRange
from servewise.plan.routing import rank_replicas
from servewise.plan.serving import ServingCalibration
from servewise.plan.step_cost import StepCostModel, shape_of
from servewise.plan.workload import PointWorkload
from servewise.slo import AdmissionConfig, AdmissionController, AdmissionMode, SLOClass
from servewise.types import FinishReason, RequestTimings, SamplingParams

_GENERATOR = torch.Generator()  # never drawn from: sampling is replaced by the workload's lengths
# Event kinds, in the order events at the same instant are handled: requests arriving at the
# moment a step ends join the next one, as the loop drains its inbox right before scheduling.
_ARRIVE, _WAKE, _STEP_END = 0, 1, 2


@dataclass
class _Flight:
    """One request from the client's send to its end."""

    index: int  # the bench's request index within the point
    scheduled_s: float  # when the load shape wanted it sent
    send_s: float
    warmup: bool
    key: int = 0  # admission's key (= index)
    replica: int = 0
    output_token: int = -1  # the id its outputs get: negative (no prompt holds it) and unique in the fleet
    token_times: list[float] = field(default_factory=list)


class Replica:
    """One engine: the engine's scheduler, KV cache and admission, and what it last published."""

    def __init__(self, index: int, spec: EngineSpec, num_blocks: int, admission: bool, sim: FleetSimulator) -> None:
        self.index = index
        self.scheduler_config = spec.scheduler
        self.kv = KVCacheManager(num_blocks, spec.block_size, spec.enable_prefix_caching)
        self.scheduler = Scheduler(spec.scheduler, self.kv, clock=sim.clock)
        mode = AdmissionMode.ENFORCE if admission else AdmissionMode.OBSERVE
        self.admission = AdmissionController(AdmissionConfig.for_scheduler(spec.scheduler, mode=mode),
                                             clock=sim.clock)
        self.inbox: list[Request] = []  # admitted since the step in progress started
        self.step: ScheduleOutput | None = None  # the step in progress
        self.waking = False  # idle, and woken up by a request (its loop runs once the instant's arrivals are in)
        self.step_start_s = 0.0
        self.step_forward_s = 0.0
        self.step_prefill_tokens = 0
        self.published_running = 0  # EngineStats as of the last step end
        self.published_waiting = 0
        self.unseen_steps: list[StepRecord] = []  # step records admission has not observed yet
        self.num_in_flight = 0  # admitted, not finished (AsyncEngine.num_in_flight)
        self.num_steps = 0
        self.num_steps_outside = 0  # steps whose shape the profile did not cover
        self.busy_s = 0.0

    def observe(self) -> None:
        if self.unseen_steps:
            self.admission.observe_steps(self.unseen_steps)
            self.unseen_steps = []

    @property
    def has_work(self) -> bool:
        return bool(self.inbox or self.scheduler.num_running or self.scheduler.num_waiting)


@dataclass
class SimResult:
    records: list[RequestRecord]  # one per request sent, by index: what the bench would have recorded
    num_steps: int
    num_steps_outside: int  # steps beyond the profiled shapes (the fit extrapolates)
    busy_s: float  # Σ over replicas of forward time: what the engine counts as busy (engine_busy_seconds)
    end_s: float  # simulated seconds from the point's start until its last request ended
    prefix_query_tokens: int
    prefix_hit_tokens: int
    num_preemptions: int


class _Clients:
    """When requests are sent: the bench's open loop (with its concurrency cap) or closed loop."""

    def __init__(self, workload: PointWorkload, load: LoadConfig, point: LoadPoint) -> None:
        self.workload, self.load = workload, load
        self.closed = workload.arrivals_s is None
        self.cap = point.concurrency if self.closed else load.max_concurrency
        self.next_index = 0
        self.num_measured = 0
        self.in_flight = 0
        self.pending: deque[int] = deque()  # open loop: due but held by the concurrency cap

    def _warmup(self, index: int, at_s: float) -> bool:
        flags = self.workload.warmup
        return flags[index] if flags is not None else self.load.is_warmup(index, at_s)

    def start(self) -> list[_Flight]:
        if self.closed:
            return [f for f in (self._closed_next(0.0) for _ in range(self.cap or 1)) if f is not None]
        assert self.workload.arrivals_s is not None
        flights = []
        for index, at_s in enumerate(self.workload.arrivals_s):
            if self.cap is not None and index >= self.cap:
                self.pending.append(index)
                continue
            flights.append(_Flight(index, at_s, at_s, self._warmup(index, at_s)))
        self.in_flight = len(flights)
        return flights

    def done(self, now: float) -> _Flight | None:
        """A request ended at ``now``: the one its client sends next, if any."""
        if self.closed:
            return self._closed_next(now)
        self.in_flight -= 1
        if not self.pending:
            return None
        assert self.workload.arrivals_s is not None
        index = self.pending.popleft()
        at_s = self.workload.arrivals_s[index]
        self.in_flight += 1
        return _Flight(index, at_s, max(now, at_s), self._warmup(index, at_s))

    def _closed_next(self, now: float) -> _Flight | None:
        load, index = self.load, self.next_index
        warmup = self._warmup(index, now)
        if load.duration_s is not None:
            if now >= load.warmup_s + load.duration_s:
                return None
        elif not warmup and self.num_measured >= (load.num_requests or 0):
            return None
        self.next_index += 1
        self.num_measured += not warmup
        return _Flight(index, now, now, warmup)


def blocks_ever_needed(workload: PointWorkload, load: LoadConfig, block_size: int) -> int:
    """More KV blocks than a point's requests could ever hold at once (each fully allocated, no
    sharing). A pool at least this large (summed over the points a fleet serves) never evicts a
    cached block nor preempts a request, so it behaves exactly as any larger pool: the simulator
    need not build the rest of a big one."""
    largest = max((-(-(len(r.prompt_token_ids) + r.max_tokens) // block_size) for r in workload.requests), default=1)
    if workload.arrivals_s is not None:
        num_sends = len(workload.arrivals_s)
    elif load.num_requests is not None and load.duration_s is None:
        num_sends = load.warmup_requests + load.num_requests
    else:
        return 1 << 62  # closed loop by duration: no bound known in advance
    return 2 + num_sends * largest


@dataclass
class _Counters:
    """A fleet's running totals, to report each point's own share."""

    steps: int
    outside: int
    busy_s: float
    queried: int
    hits: int
    preemptions: int

    @classmethod
    def of(cls, replicas: list[Replica]) -> _Counters:
        return cls(sum(r.num_steps for r in replicas), sum(r.num_steps_outside for r in replicas),
                   sum(r.busy_s for r in replicas), sum(r.kv.num_prefix_query_tokens for r in replicas),
                   sum(r.kv.num_prefix_hit_tokens for r in replicas),
                   sum(r.scheduler.num_preemptions for r in replicas))


class FleetSimulator:
    """``num_replicas`` engines serving load points one after the other, as ``servewise bench`` runs a
    sweep against one server: KV caches (prefix hits) and admission's fitted costs carry over from a
    point to the next. A seed fixes the router's ties."""

    def __init__(self, spec: EngineSpec, cost: StepCostModel, slo_class: SLOClass, *, num_replicas: int = 1,
                 admission: bool = True, ranges: ProfiledRange | None = None, seed: int = 0,
                 blocks_needed: int | None = None, serving: ServingCalibration | None = None) -> None:
        """``blocks_needed``: ``blocks_ever_needed`` summed over every point this fleet will serve
        (None: the first point's). ``serving``: when clients see tokens, against when the engine
        produced them (None: at once); ``cost`` is the calibration's already (``serving.apply``)."""
        self.spec, self.cost, self.slo_class, self.ranges = spec, cost, slo_class, ranges
        self.serving = serving
        self.now = 0.0
        self.num_replicas, self.admission, self.blocks_needed = num_replicas, admission, blocks_needed
        self.replicas: list[Replica] = []  # built by the first run()
        self._rng = random.Random(seed)
        self._events: list[tuple[float, int, int, object]] = []  # (time, kind, sequence number, payload)
        self._seq = 0
        self._flights: dict[str, _Flight] = {}  # request id -> its flight
        self._params: dict[int, SamplingParams] = {}
        self._records: list[RequestRecord] = []
        self._origin_s = 0.0  # when the point being served started
        self._num_sent = 0

    def clock(self) -> float:
        return self.now

    def _push(self, at_s: float, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at_s, kind, self._seq, payload))

    def _send(self, flight: _Flight) -> None:
        """``flight``'s times are relative to the point's start (the clients' view); from here on absolute."""
        flight.scheduled_s += self._origin_s
        flight.send_s += self._origin_s
        self._num_sent += 1
        flight.output_token = -self._num_sent  # outputs never fake a prefix hit, across points too
        prompt = self._workload.requests[flight.index % len(self._workload.requests)].prompt_token_ids
        self._push(flight.send_s + self.cost.request_ingress_s(len(prompt)), _ARRIVE, flight)

    def run(self, workload: PointWorkload, load: LoadConfig, point: LoadPoint) -> SimResult:
        """Serve one point, starting when the previous one ended; returns what the bench would record."""
        if point.mode is LoadMode.OPEN_LOOP and workload.arrivals_s is None:
            raise ValueError("an open-loop point needs send times")
        if not self.replicas:
            needed = self.blocks_needed or blocks_ever_needed(workload, load, self.spec.block_size)
            num_blocks = min(self.spec.num_blocks, needed)
            self.replicas = [Replica(i, self.spec, num_blocks, self.admission, self) for i in range(self.num_replicas)]
        self._workload, self._origin_s, self._records = workload, self.now, []
        self._clients = _Clients(workload, load, point)
        before = _Counters.of(self.replicas)
        for flight in self._clients.start():
            self._send(flight)
        while self._events:
            at_s, kind, _, payload = heapq.heappop(self._events)
            self.now = at_s
            if kind == _ARRIVE:
                assert isinstance(payload, _Flight)
                self._arrive(payload)
            elif kind == _WAKE:
                assert isinstance(payload, Replica)
                payload.waking = False
                if payload.step is None:
                    self._start_step(payload)
            else:
                assert isinstance(payload, Replica)
                self._end_step(payload)
        return self._result(before)

    def _result(self, before: _Counters) -> SimResult:
        self._records.sort(key=lambda r: r.index)
        after = _Counters.of(self.replicas)
        return SimResult(self._records, after.steps - before.steps, after.outside - before.outside,
                         after.busy_s - before.busy_s, self.now - self._origin_s, after.queried - before.queried,
                         after.hits - before.hits, after.preemptions - before.preemptions)

    def _arrive(self, flight: _Flight) -> None:
        sim_request = self._workload.requests[flight.index % len(self._workload.requests)]
        prompt = sim_request.prompt_token_ids
        if len(prompt) + sim_request.max_tokens > self.spec.max_model_len:  # the server's 400
            self._refuse(flight, Outcome.CLIENT_ERROR, 400, "prompt + max_tokens exceed the context length")
            return
        for replica in self.replicas:
            replica.observe()
        order, fleet_shed = [0], None
        if len(self.replicas) > 1:
            order, fleet_shed = rank_replicas(self.replicas, prompt, self.slo_class, self._rng)
        if fleet_shed is not None and self.admission:
            self._refuse(flight, Outcome.SHED, 429, fleet_shed)
            return
        flight.key = flight.index
        refusal = ""
        for index in order:  # a replica whose own admission refuses passes the request on, as Ray does
            replica = self.replicas[index]
            num_waiting = max(replica.published_waiting, replica.num_in_flight - replica.published_running)
            try:
                replica.admission.admit(flight.key, len(prompt) - replica.kv.num_cached_prefix_tokens(prompt),
                                        self.slo_class, num_running=replica.published_running,
                                        num_waiting=num_waiting)
                break
            except OverloadedError as exc:
                refusal = exc.message
        else:
            self._refuse(flight, Outcome.SHED, 429, refusal)
            return
        flight.replica = replica.index
        replica.num_in_flight += 1
        replica.inbox.append(self._engine_request(flight, sim_request.max_tokens, prompt))
        if replica.step is None and not replica.waking:  # an idle engine wakes up for it
            replica.waking = True
            self._push(self.now, _WAKE, replica)

    def _engine_request(self, flight: _Flight, max_tokens: int, prompt: tuple[int, ...]) -> Request:
        params = self._params.get(max_tokens)
        if params is None:
            params = self._params[max_tokens] = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        rid = str(flight.index)
        self._flights[rid] = flight
        ttft_s = self.slo_class.ttft_s
        return Request(request_id=rid, group_id=rid, index=0, prompt_token_ids=list(prompt), params=params,
                       timings=RequestTimings(arrival_s=flight.send_s), eos_token_ids=frozenset(),
                       max_total_tokens=self.spec.max_model_len, generator=_GENERATOR,
                       priority=self.slo_class.priority,
                       deadline_s=None if ttft_s is None else flight.send_s + ttft_s)

    def _start_step(self, replica: Replica) -> None:
        for request in replica.inbox:
            replica.scheduler.add_request(request)
        replica.inbox.clear()
        sched = replica.scheduler.schedule()
        if sched.is_empty:
            if replica.has_work:
                raise RuntimeError("the scheduler scheduled nothing while requests wait: the engine would spin")
            replica.step = None
            return
        shape = shape_of(sched.chunks)
        replica.step, replica.step_start_s = sched, self.now
        replica.step_forward_s = self.cost.forward_s(shape)
        replica.step_prefill_tokens = sum(c.num_new_tokens for c in sched.chunks
                                          if c.request.num_computed_tokens < c.request.num_prompt_tokens)
        if self.ranges is not None and not self.ranges.covers(shape):
            replica.num_steps_outside += 1
        step_s = replica.step_forward_s + self.cost.host_s(shape)
        replica.num_steps += 1
        replica.busy_s += replica.step_forward_s
        self._push(self.now + step_s, _STEP_END, replica)

    def _end_step(self, replica: Replica) -> None:
        sched, start_s, now = replica.step, replica.step_start_s, self.now
        assert sched is not None
        scheduler = replica.scheduler
        for chunk in sched.chunks:
            request = chunk.request
            samples = chunk.samples
            scheduler.complete_chunk(chunk, start_s)
            if not samples:
                continue
            flight = self._flights[request.request_id]
            request.append_token(flight.output_token)
            flight.token_times.append(now)
            if len(flight.token_times) == 1:
                replica.admission.on_first_token(flight.key, now - flight.send_s)
            if request.num_output_tokens >= (request.params.max_tokens or 0) or (
                    request.num_tokens >= request.max_total_tokens):
                scheduler.finish(request, FinishReason.LENGTH)
                self._complete(flight, replica, request.num_output_tokens)
        record = StepRecord(duration_s=replica.step_forward_s, num_tokens=sched.num_batched_tokens,
                            num_prefill_tokens=replica.step_prefill_tokens, num_requests=len(sched.chunks),
                            end_s=start_s + replica.step_forward_s)
        replica.unseen_steps.append(record)
        scheduler.cost_model.observe(record)  # the SLO step budget learns from its steps, as the engine's does
        replica.published_running, replica.published_waiting = scheduler.num_running, scheduler.num_waiting
        replica.step = None
        if replica.has_work:
            self._start_step(replica)

    def _complete(self, flight: _Flight, replica: Replica, num_output_tokens: int) -> None:
        now = self.now
        replica.admission.on_finished(flight.key)
        replica.num_in_flight -= 1
        del self._flights[str(flight.index)]
        send = flight.send_s
        ttft_s = flight.token_times[0] - send
        # the client sees the stream later than the engine made it (serving.py); TPOT is unchanged
        shift = 0.0 if self.serving is None else self.serving.first_token_shift_s(ttft_s)
        self._records.append(RequestRecord(
            index=flight.index, scheduled_s=flight.scheduled_s - self._origin_s, send_s=send - self._origin_s,
            outcome=Outcome.OK,
            kind=self._kind(flight), http_status=200, ttft_s=ttft_s + shift, e2e_s=now - send + shift,
            token_times_s=[t - send + shift for t in flight.token_times], num_input_tokens=self._num_prompt(flight),
            num_output_tokens=num_output_tokens, usage_reported=True, warmup=flight.warmup))
        self._next(now)

    def _refuse(self, flight: _Flight, outcome: Outcome, status: int, error: str) -> None:
        self._records.append(RequestRecord(
            index=flight.index, scheduled_s=flight.scheduled_s - self._origin_s,
            send_s=flight.send_s - self._origin_s, outcome=outcome,
            kind=self._kind(flight), http_status=status, e2e_s=self.now - flight.send_s,
            num_input_tokens=self._num_prompt(flight), retry_after="1" if status == 429 else None, error=error,
            warmup=flight.warmup))
        self._next(self.now)

    def _next(self, now: float) -> None:
        follow = self._clients.done(now - self._origin_s)
        if follow is not None:
            self._send(follow)

    def _kind(self, flight: _Flight) -> str:
        return self._workload.requests[flight.index % len(self._workload.requests)].kind

    def _num_prompt(self, flight: _Flight) -> int:
        return len(self._workload.requests[flight.index % len(self._workload.requests)].prompt_token_ids)
