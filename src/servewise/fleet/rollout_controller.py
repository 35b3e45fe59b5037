"""A rollout's state machine: steps, the gate's verdicts, the operator's commands. Pure.

Canary: RUNNING at ``steps[i]`` % of the traffic. At the end of every analysis window the gate
judges the step so far: ROLLBACK → the candidate gets 0 % (ROLLED_BACK, remove it); EXTEND →
stay; PROMOTE → the next step (its windows start empty), or, after the last step (100 %),
PROMOTED: the candidate becomes the baseline and the old version drains. PAUSED holds the
share and skips the gate; ``promote`` moves one step at once; ``abort`` is a rollback.

Shadow: RUNNING with 0 % of the traffic and a sample mirrored; COMPLETED after its duration.

Everything is in ``RolloutState``, a plain dict away from the state store, so an ingress that
restarts picks the rollout up where it was (wall-clock times, not monotonic).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from servewise.fleet.rollout_gate import GateDecision, VersionWindow, evaluate
from servewise.fleet.rollout_spec import RolloutMode, RolloutSpec, rollout_spec_from_dict, spec_to_dict

MAX_DECISIONS_KEPT = 200


class RolloutPhase(str, enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"  # canary reached 100 %: the candidate is the baseline now
    ROLLED_BACK = "rolled_back"  # the gate found it worse
    ABORTED = "aborted"  # the operator stopped it
    COMPLETED = "completed"  # a shadow run ended

    @property
    def active(self) -> bool:
        return self in (RolloutPhase.RUNNING, RolloutPhase.PAUSED)


class Action(str, enum.Enum):
    """What the runtime must do after a transition."""

    NONE = "none"
    NEXT_STEP = "next_step"  # new share; restart the analysis windows
    PROMOTE_CANDIDATE = "promote_candidate"  # route everything to the candidate, drain the old baseline
    REMOVE_CANDIDATE = "remove_candidate"  # route nothing to it and delete it


@dataclass
class RolloutState:
    rollout_id: str
    spec: RolloutSpec
    baseline: str  # the version that served users when the rollout started
    candidate: str  # the version being rolled out
    phase: RolloutPhase = RolloutPhase.RUNNING
    step_index: int = 0
    started_s: float = 0.0  # wall clock
    step_started_s: float = 0.0
    ended_s: float | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)  # newest last
    shadow_report: dict[str, Any] = field(default_factory=dict)  # shadow mode: the comparison so far

    @property
    def share(self) -> float:
        """The candidate's share of users' traffic, 0..1."""
        if self.phase is RolloutPhase.PROMOTED:
            return 1.0
        if not self.phase.active or self.spec.mode is RolloutMode.SHADOW:
            return 0.0
        return self.spec.steps[self.step_index] / 100.0

    @property
    def shadow_sample(self) -> float:
        active = self.phase.active and self.spec.mode is RolloutMode.SHADOW
        return self.spec.shadow_sample if active else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"rollout_id": self.rollout_id, "spec": spec_to_dict(self.spec), "baseline": self.baseline,
                "candidate": self.candidate, "phase": self.phase.value, "step_index": self.step_index,
                "started_s": self.started_s, "step_started_s": self.step_started_s, "ended_s": self.ended_s,
                "decisions": self.decisions, "shadow_report": self.shadow_report, "share": self.share}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        return cls(rollout_id=data["rollout_id"], spec=rollout_spec_from_dict(data["spec"]),
                   baseline=data["baseline"], candidate=data["candidate"], phase=RolloutPhase(data["phase"]),
                   step_index=int(data["step_index"]), started_s=float(data["started_s"]),
                   step_started_s=float(data["step_started_s"]), ended_s=data.get("ended_s"),
                   decisions=list(data.get("decisions", [])), shadow_report=dict(data.get("shadow_report", {})))


class RolloutController:
    def __init__(self, state: RolloutState, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self._clock = clock

    @classmethod
    def start(cls, rollout_id: str, spec: RolloutSpec, baseline: str, candidate: str,
              clock: Callable[[], float] = time.time) -> RolloutController:
        now = clock()
        controller = cls(RolloutState(rollout_id, spec, baseline, candidate, started_s=now, step_started_s=now), clock)
        controller._log("start", [f"{spec.mode.value} of {candidate} against {baseline}"], {})
        return controller

    def on_window(self, base: VersionWindow, cand: VersionWindow) -> Action:
        """The end of an analysis window (canary, RUNNING): judge the step so far."""
        s = self.state
        if s.phase is not RolloutPhase.RUNNING or s.spec.mode is not RolloutMode.CANARY:
            return Action.NONE
        now = self._clock()
        result = evaluate(base, cand, s.spec.analysis, step_age_s=now - s.step_started_s,
                          step_min_duration_s=s.spec.step_min_duration_s, step_min_requests=s.spec.step_min_requests,
                          compare_p99=s.share < 1.0)
        if result.decision is GateDecision.ROLLBACK:
            return self._end(RolloutPhase.ROLLED_BACK, "rollback", list(result.reasons), result.figures)
        if result.decision is GateDecision.EXTEND:
            self._log("extend", list(result.reasons), result.figures)
            return Action.NONE
        return self._advance("promote", list(result.reasons), result.figures)

    def on_shadow_tick(self) -> Action:
        """Shadow: finish once it has mirrored long enough."""
        s = self.state
        if s.phase is RolloutPhase.RUNNING and s.spec.mode is RolloutMode.SHADOW and \
                self._clock() - s.started_s >= s.spec.shadow_duration_s:
            return self._end(RolloutPhase.COMPLETED, "complete", ["shadow duration reached"], s.shadow_report)
        return Action.NONE

    # -- the operator ---------------------------------------------------------------------------
    def promote(self) -> Action:
        if not self.state.phase.active or self.state.spec.mode is not RolloutMode.CANARY:
            return Action.NONE
        self.state.phase = RolloutPhase.RUNNING
        return self._advance("promote", ["promoted by the operator"], {})

    def pause(self) -> Action:
        if self.state.phase is RolloutPhase.RUNNING:
            self.state.phase = RolloutPhase.PAUSED
            self._log("pause", ["paused by the operator"], {})
        return Action.NONE

    def resume(self) -> Action:
        if self.state.phase is RolloutPhase.PAUSED:
            self.state.phase = RolloutPhase.RUNNING
            self.state.step_started_s = self._clock()
            self._log("resume", ["resumed by the operator; the step's analysis starts over"], {})
            return Action.NEXT_STEP
        return Action.NONE

    def abort(self) -> Action:
        if not self.state.phase.active:
            return Action.NONE
        return self._end(RolloutPhase.ABORTED, "abort", ["aborted by the operator"], {})

    # -- transitions ----------------------------------------------------------------------------
    def _advance(self, decision: str, reasons: list[str], figures: dict[str, Any]) -> Action:
        s = self.state
        if s.step_index + 1 >= len(s.spec.steps):
            return self._end(RolloutPhase.PROMOTED, decision, reasons + ["the candidate is the baseline now"], figures)
        s.step_index += 1
        s.step_started_s = self._clock()
        self._log(decision, reasons + [f"step {s.step_index + 1}/{len(s.spec.steps)}: {s.spec.steps[s.step_index]:g} %"],
                  figures)
        return Action.NEXT_STEP

    def _end(self, phase: RolloutPhase, decision: str, reasons: list[str], figures: dict[str, Any]) -> Action:
        s = self.state
        s.phase = phase
        s.ended_s = self._clock()
        self._log(decision, reasons, figures)
        return Action.PROMOTE_CANDIDATE if phase is RolloutPhase.PROMOTED else Action.REMOVE_CANDIDATE

    def _log(self, decision: str, reasons: list[str], figures: dict[str, Any]) -> None:
        s = self.state
        entry = {"time_s": round(self._clock(), 3), "rollout_id": s.rollout_id, "decision": decision,
                 "phase": s.phase.value, "step": s.step_index + 1, "share": s.share, "reasons": reasons,
                 "figures": figures}
        s.decisions = (s.decisions + [entry])[-MAX_DECISIONS_KEPT:]

    def snapshot(self) -> dict[str, Any]:
        return replace(self.state).to_dict()
