"""A rollout running in the fleet's ingress: the controller, its clock, its I/O.

Owns the ``RolloutController`` (decisions), the ``RolloutRecorder`` (what each version did this
step) and the ``ShadowComparison``; answers the ingress's ``RolloutHooks`` (which version a
session goes to, what to mirror); every ``analysis.window`` it asks the controller and applies
the action: a new step, promote the candidate to baseline (the old version drains), or remove
the candidate. Deploying and deleting versions is the ``Deployer``'s (Ray, in ``ray_app``); the
state goes to a ``StateBackend`` after every change, so an ingress that restarts continues.
Every decision is one JSON log line (logger ``servewise.rollout``) and a metric.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from servewise.config import ConfigError, EngineConfig
from servewise.errors import ServeWiseError
from servewise.fleet.fleet_call import VersionTarget
from servewise.fleet.rollout_controller import Action, RolloutController, RolloutState
from servewise.fleet.rollout_gate import VersionWindow
from servewise.fleet.rollout_spec import RolloutMode, RolloutSpec
from servewise.fleet.rollout_window import Finished, RolloutRecorder
from servewise.fleet.shadow import ShadowComparison, ShadowPair, on_candidate
from servewise.slo import MetricSample

if TYPE_CHECKING:
    from servewise.fleet.config import FleetConfig
    from servewise.fleet.ingress import FleetBackend

logger = logging.getLogger("servewise.rollout")


class RolloutConflictError(ServeWiseError):
    """A rollout is already running (409)."""

    error_type = "rollout_conflict"
    http_status = 409
    openai_type = "invalid_request_error"


class Deployer(Protocol):
    """Puts model versions on the cluster (blocking calls: the manager runs them in threads)."""

    def deploy(self, version: str, engine: EngineConfig, replicas: int) -> VersionTarget:
        """Deploy and wait until a replica has loaded its model."""

    def attach(self, version: str) -> VersionTarget:
        """A version deployed earlier (an ingress that restarted)."""

    def delete(self, version: str) -> None:
        """Stop routing to it, let its in-flight requests finish, remove it."""

    def check_candidate(self, spec: RolloutSpec) -> EngineConfig:
        """The candidate's engine; ConfigError when it cannot serve beside the baseline."""


class StateBackend(Protocol):
    def get(self) -> dict[str, Any] | None: ...

    async def put(self, value: dict[str, Any]) -> None: ...


@dataclass
class SavedState:
    """What survives an ingress restart."""

    baseline: str = "v1"  # the version serving users
    next_version: int = 2  # the number of the next candidate
    rollout: RolloutState | None = None  # the current or last rollout
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier rollouts, summaries

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "next_version": self.next_version,
                "rollout": self.rollout.to_dict() if self.rollout else None, "history": self.history[-20:]}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SavedState:
        if not data:
            return cls()
        rollout = RolloutState.from_dict(data["rollout"]) if data.get("rollout") else None
        return cls(data["baseline"], int(data["next_version"]), rollout, list(data.get("history", [])))


class RolloutStore:
    def __init__(self, backend: StateBackend) -> None:
        self._backend = backend

    def load(self) -> SavedState:
        return SavedState.from_dict(self._backend.get())

    async def save(self, saved: SavedState) -> None:
        await self._backend.put(saved.to_dict())


class RolloutManager:
    def __init__(self, fleet: FleetBackend, config: FleetConfig, store: RolloutStore, deployer: Deployer,
                 saved: SavedState) -> None:
        self.fleet = fleet
        self.config = config
        self.store = store
        self.deployer = deployer
        self.saved = saved
        self.controller = RolloutController(saved.rollout) if saved.rollout else None
        self.recorder = RolloutRecorder()
        self.shadow = ShadowComparison()
        self.decisions: Counter[str] = Counter()
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (version, outcome)
        self._rng = random.Random()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._num_logged = len(saved.rollout.decisions) if saved.rollout else 0  # logged before a restart
        self._reference: VersionWindow | None = None  # the baseline's window of the step before

    # -- RolloutHooks (the ingress asks, per request) ------------------------------------------
    @property
    def _active(self) -> RolloutState | None:
        state = self.controller.state if self.controller else None
        return state if state is not None and state.phase.active else None

    def version_for(self, session: str | None) -> str | None:
        state = self._active
        if state is None or state.share <= 0:
            return None
        key = session if session is not None else uuid.uuid4().hex  # no session: each request on its own
        return state.candidate if on_candidate(key, state.rollout_id, state.share) else None

    def on_finished(self, record: Finished) -> None:
        self.outcomes[(record.version, record.outcome.value)] += 1
        if self._active is not None:
            self.recorder.record(record)

    def mirror_to(self, served_by: str) -> str | None:
        state = self._active
        if state is None or served_by != state.baseline or self._rng.random() >= state.shadow_sample:
            return None
        return state.candidate

    def on_mirrored(self, pair: ShadowPair | None) -> None:
        if pair is None:
            self.shadow.num_skipped += 1
        else:
            self.shadow.add(pair)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Pick up a rollout that was running when this ingress (re)started."""
        state = self._active
        if state is not None:
            self.fleet.add_version(self.deployer.attach(state.candidate))
            self.recorder.reset(time.time())
        self._task = loop.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            state = self._active
            await asyncio.sleep(state.spec.analysis.window_s if state else 1.0)
            try:
                await self.tick()
            except Exception:  # never let the analysis loop die: log and try again next window
                logger.exception("rollout analysis failed")

    async def tick(self) -> None:
        """The end of an analysis window."""
        async with self._lock:
            if self.controller is None or self._active is None:
                return
            state = self.controller.state
            if state.spec.mode is RolloutMode.SHADOW:
                state.shadow_report = self.shadow.report()
                action = self.controller.on_shadow_tick()
            else:
                base = self.recorder.window(state.baseline)
                if state.share >= 1.0 and self._reference is not None:
                    base = self._reference  # at 100 % the baseline serves nobody: its last step stands in
                action = self.controller.on_window(base, self.recorder.window(state.candidate))
            await self._apply(action)

    # -- the operator ---------------------------------------------------------------------------
    async def begin(self, spec: RolloutSpec) -> dict[str, Any]:
        """Deploy the candidate and start; RolloutConflictError (409) while one runs,
        ConfigError (400) for a candidate that cannot serve beside the baseline."""
        async with self._lock:
            if self._active is not None:
                raise RolloutConflictError(f"rollout {self._active.rollout_id} is {self._active.phase.value}; "
                                           "abort it or wait for it to end")
            engine = await asyncio.to_thread(self.deployer.check_candidate, spec)
            version = f"v{self.saved.next_version}"
            self.saved.next_version += 1
            await self.store.save(self.saved)
            target = await asyncio.to_thread(self.deployer.deploy, version, engine, spec.candidate.replicas)
            self.fleet.add_version(target)
            rollout_id = f"r{self.saved.next_version - 1}-{uuid.uuid4().hex[:6]}"
            self.controller = RolloutController.start(rollout_id, spec, self.saved.baseline, version)
            self._num_logged = 0
            self._log_new_decisions()
            self.recorder.reset(time.time())
            self.shadow = ShadowComparison()
            await self._persist()
            return self.status()

    async def command(self, name: str) -> dict[str, Any]:
        async with self._lock:
            if self.controller is None:
                raise ConfigError("no rollout has been started")
            act = {"promote": self.controller.promote, "pause": self.controller.pause,
                   "resume": self.controller.resume, "abort": self.controller.abort}.get(name)
            if act is None:
                raise ConfigError(f"unknown rollout command {name!r}; known: promote, pause, resume, abort")
            await self._apply(act())
            return self.status()

    async def _apply(self, action: Action) -> None:
        assert self.controller is not None
        state = self.controller.state
        self._log_new_decisions()
        if action is Action.NEXT_STEP:
            self._reference = self.recorder.window(state.baseline)
            self.recorder.reset(time.time())
        retired = None
        if action is Action.PROMOTE_CANDIDATE:
            retired = self.saved.baseline
            self.fleet.set_baseline(state.candidate)
            self.saved.baseline = state.candidate
        elif action is Action.REMOVE_CANDIDATE:
            retired = state.candidate
        if retired is not None:
            self.fleet.remove_version(retired)  # new requests stop going there at once
        await self._persist()
        if retired is not None:
            await asyncio.to_thread(self.deployer.delete, retired)  # Ray drains it: requests in flight finish

    async def _persist(self) -> None:
        if self.controller is not None:
            state = self.controller.state
            self.saved.rollout = state
            if not state.phase.active and all(h.get("rollout_id") != state.rollout_id for h in self.saved.history):
                self.saved.history.append(_summary(state))
        await self.store.save(self.saved)

    def _log_new_decisions(self) -> None:
        assert self.controller is not None
        decisions = self.controller.state.decisions
        for entry in decisions[self._num_logged:]:
            self.decisions[entry["decision"]] += 1
            logger.info(json.dumps({"event": "rollout_decision", **entry}, default=str, separators=(",", ":")))
        self._num_logged = len(decisions)

    # -- reporting ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        state = self.controller.state if self.controller else None
        body: dict[str, Any] = {"baseline": self.saved.baseline, "versions": sorted(self.fleet.versions),
                                "rollout": state.to_dict() if state else None, "history": self.saved.history}
        if state is not None and state.phase.active:
            body["windows"] = {v: self.recorder.window(v).as_dict() for v in (state.baseline, state.candidate)}
            if state.spec.mode is RolloutMode.SHADOW:
                body["shadow"] = self.shadow.report()
        return body

    def metric_samples(self) -> Iterator[MetricSample]:
        state = self._active
        yield MetricSample("servewise:rollout_step", {}, float(state.step_index + 1) if state else 0.0)
        share = state.share if state else 0.0
        yield MetricSample("servewise:rollout_traffic_ratio", {"version": self.saved.baseline}, 1.0 - share)
        if state is not None:
            yield MetricSample("servewise:rollout_traffic_ratio", {"version": state.candidate}, share)
            for version in (state.baseline, state.candidate):
                w = self.recorder.window(version)
                labels = {"version": version}
                if w.attainment is not None:
                    yield MetricSample("servewise:rollout_slo_attainment_ratio", labels, w.attainment)
                for name, value in (("ttft", w.ttft_p99_s), ("tpot", w.tpot_p99_s)):
                    if value is not None:
                        yield MetricSample(f"servewise:rollout_{name}_p99_seconds", labels, value)
        for decision, count in self.decisions.items():
            yield MetricSample("servewise:rollout_decisions_total", {"decision": decision}, float(count))
        for (version, outcome), count in self.outcomes.items():
            yield MetricSample("servewise:rollout_requests_total", {"version": version, "outcome": outcome},
                               float(count))
        report = self.shadow.report()
        yield MetricSample("servewise:shadow_requests_total", {"outcome": "mirrored"}, float(report["num_mirrored"]))
        yield MetricSample("servewise:shadow_requests_total", {"outcome": "skipped"}, float(report["num_skipped"]))
        for name in ("exact_match_rate", "token_agreement"):
            value = report["greedy"][name]
            if value is not None:
                yield MetricSample(f"servewise:shadow_{name.replace('_rate', '')}_ratio", {}, value)


def _summary(state: RolloutState) -> dict[str, Any]:
    last = state.decisions[-1] if state.decisions else {}
    return {"rollout_id": state.rollout_id, "mode": state.spec.mode.value, "candidate": state.candidate,
            "phase": state.phase.value, "started_s": state.started_s, "ended_s": state.ended_s,
            "reasons": last.get("reasons", [])}

