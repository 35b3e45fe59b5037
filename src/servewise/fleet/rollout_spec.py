"""A rollout spec (`rollout.yaml`): what to roll out, how fast, and what counts as worse.

```yaml
mode: canary                      # canary | shadow
candidate:
  model: path/to/model.gguf       # default: the baseline's model
  engine_args: ["--linear-backend", "fp32"]   # `servewise serve` engine flags for the candidate
  replicas: 1
steps: [1, 5, 25, 50, 100]        # canary: candidate's share of traffic per step, %, ending at 100
step_min_duration: 60s            # a step is never promoted sooner...
step_min_requests: 100            # ...or on fewer candidate requests (catching a 5 % error rate
                                  #    reliably takes ~250: see the README)
analysis:
  window: 10s                     # the gate runs at the end of every window (on the whole step so far)
  confidence: 0.95                # one-sided test: candidate worse at this confidence -> rollback
  attainment_tolerance: 0.02      # worse only beyond this many points of SLO attainment
  error_tolerance: 0.01           # ... of error rate
  shed_tolerance: 0.05            # ... of shed rate
  p99_ratio_tolerance: 1.25       # TTFT / TPOT p99 up to this × the baseline's is "no worse",
  p99_min_delta: 50ms             # and so is any p99 within this of the baseline's
  min_samples: 20                 # requests per version before the gate judges anything
shadow:
  sample: 0.1                     # shadow: share of requests mirrored to the candidate
  duration: 5m                    # how long to mirror before the report is final
```

Parsed once into frozen dataclasses; every mistake is refused with a message naming the field,
before any traffic moves.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from servewise.config import ConfigError
from servewise.slo.files import parse_duration_s

DEFAULT_STEPS = (1.0, 5.0, 25.0, 50.0, 100.0)


class RolloutMode(str, enum.Enum):
    CANARY = "canary"
    SHADOW = "shadow"


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(f"rollout spec: {message}")


@dataclass(frozen=True)
class CandidateSpec:
    model: str | None = None  # None: the baseline's model
    engine_args: tuple[str, ...] = ()  # `servewise serve` engine flags (e.g. --linear-backend fp32)
    replicas: int = 1

    def __post_init__(self) -> None:
        _require(1 <= self.replicas <= 64, f"candidate.replicas must be in [1, 64], got {self.replicas}")


@dataclass(frozen=True)
class AnalysisConfig:
    window_s: float = 10.0  # the gate runs at the end of every window
    confidence: float = 0.95  # one-sided: "candidate worse" at this confidence rolls back
    attainment_tolerance: float = 0.02  # SLO attainment may be this much lower without counting as worse
    error_tolerance: float = 0.01  # error rate may be this much higher
    shed_tolerance: float = 0.05  # shed rate may be this much higher
    p99_ratio_tolerance: float = 1.25  # candidate p99 TTFT/TPOT ≤ this × the baseline's is "no worse"...
    p99_min_delta_s: float = 0.05  # ...and so is any p99 within this of the baseline's (a few ms are noise)
    min_samples: int = 20  # requests per version before the gate judges anything

    def __post_init__(self) -> None:
        _require(self.window_s > 0, "analysis.window must be positive")
        _require(0.5 <= self.confidence < 1, f"analysis.confidence must be in [0.5, 1), got {self.confidence}")
        for name in ("attainment_tolerance", "error_tolerance", "shed_tolerance"):
            value = getattr(self, name)
            _require(0 <= value < 1, f"analysis.{name} must be in [0, 1), got {value}")
        _require(self.p99_ratio_tolerance >= 1, "analysis.p99_ratio_tolerance must be ≥ 1")
        _require(self.p99_min_delta_s >= 0, "analysis.p99_min_delta must be ≥ 0")
        _require(self.min_samples >= 1, "analysis.min_samples must be ≥ 1")


@dataclass(frozen=True)
class RolloutSpec:
    mode: RolloutMode = RolloutMode.CANARY
    candidate: CandidateSpec = field(default_factory=CandidateSpec)
    steps: tuple[float, ...] = DEFAULT_STEPS  # % of traffic to the candidate, increasing, ending at 100
    step_min_duration_s: float = 60.0
    step_min_requests: int = 100
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    shadow_sample: float = 0.1  # shadow: share of requests mirrored
    shadow_duration_s: float = 300.0  # shadow: how long to mirror

    def __post_init__(self) -> None:
        _require(bool(self.steps), "steps must not be empty")
        _require(all(0 < s <= 100 for s in self.steps), f"every step must be a share in (0, 100], got {list(self.steps)}")
        _require(list(self.steps) == sorted(set(self.steps)), f"steps must increase, got {list(self.steps)}")
        _require(self.steps[-1] == 100, f"steps must end at 100 (the candidate takes all traffic), got {list(self.steps)}")
        _require(self.mode is RolloutMode.SHADOW or len(self.steps) >= 2,
                 "a canary needs a step below 100 (the last step is judged against the baseline's previous one)")
        _require(self.step_min_duration_s >= 0 and self.step_min_requests >= 0,
                 "step_min_duration and step_min_requests must be ≥ 0")
        _require(0 < self.shadow_sample <= 1, f"shadow.sample must be in (0, 1], got {self.shadow_sample}")
        _require(self.shadow_duration_s > 0, "shadow.duration must be positive")


def rollout_spec_from_dict(data: Mapping[str, Any]) -> RolloutSpec:
    """The spec from parsed YAML/JSON; ConfigError naming the field for anything wrong."""
    _require(isinstance(data, Mapping), "the spec must be a mapping")
    known = {"mode", "candidate", "steps", "step_min_duration", "step_min_requests", "analysis", "shadow"}
    unknown = sorted(set(data) - known)
    _require(not unknown, f"unknown field(s) {unknown}; known: {sorted(known)}")
    try:
        mode = RolloutMode(data.get("mode", "canary"))
    except ValueError:
        raise ConfigError(f"rollout spec: mode must be canary or shadow, got {data.get('mode')!r}") from None
    cand = _mapping(data.get("candidate", {}), "candidate")
    args = cand.get("engine_args", ())
    _require(isinstance(args, Sequence) and not isinstance(args, str) and all(isinstance(a, str) for a in args),
             "candidate.engine_args must be a list of strings")
    candidate = CandidateSpec(model=cand.get("model"), engine_args=tuple(args), replicas=_int(cand, "replicas", 1))
    analysis = _mapping(data.get("analysis", {}), "analysis")
    shadow = _mapping(data.get("shadow", {}), "shadow")
    steps = data.get("steps", list(DEFAULT_STEPS))
    _require(isinstance(steps, Sequence) and not isinstance(steps, str), "steps must be a list of shares (%)")
    return RolloutSpec(
        mode=mode, candidate=candidate, steps=tuple(_number(s, "steps") for s in steps),
        step_min_duration_s=_duration(data, "step_min_duration", 60.0),
        step_min_requests=_int(data, "step_min_requests", 100),
        analysis=_analysis(analysis),
        shadow_sample=_number(shadow.get("sample", 0.1), "shadow.sample"),
        shadow_duration_s=_duration(shadow, "duration", 300.0))


def _analysis(data: Mapping[str, Any]) -> AnalysisConfig:
    known = {"window", "confidence", "attainment_tolerance", "error_tolerance", "shed_tolerance",
             "p99_ratio_tolerance", "p99_min_delta", "min_samples"}
    unknown = sorted(set(data) - known)
    _require(not unknown, f"unknown analysis field(s) {unknown}; known: {sorted(known)}")
    d = AnalysisConfig()
    return AnalysisConfig(
        window_s=_duration(data, "window", d.window_s),
        confidence=_number(data.get("confidence", d.confidence), "analysis.confidence"),
        attainment_tolerance=_number(data.get("attainment_tolerance", d.attainment_tolerance),
                                     "analysis.attainment_tolerance"),
        error_tolerance=_number(data.get("error_tolerance", d.error_tolerance), "analysis.error_tolerance"),
        shed_tolerance=_number(data.get("shed_tolerance", d.shed_tolerance), "analysis.shed_tolerance"),
        p99_ratio_tolerance=_number(data.get("p99_ratio_tolerance", d.p99_ratio_tolerance),
                                    "analysis.p99_ratio_tolerance"),
        p99_min_delta_s=_duration(data, "p99_min_delta", d.p99_min_delta_s),
        min_samples=_int(data, "min_samples", d.min_samples))


def rollout_spec_from_text(text: str) -> RolloutSpec:
    """YAML or JSON text -> spec."""
    import yaml

    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"rollout spec: not valid YAML/JSON: {exc}") from None
    return rollout_spec_from_dict(data or {})


def spec_to_dict(spec: RolloutSpec) -> dict[str, Any]:
    """The inverse of rollout_spec_from_dict (what the state store and the status report keep);
    durations in seconds."""
    a = spec.analysis
    return {"mode": spec.mode.value,
            "candidate": {"model": spec.candidate.model, "engine_args": list(spec.candidate.engine_args),
                          "replicas": spec.candidate.replicas},
            "steps": list(spec.steps), "step_min_duration": spec.step_min_duration_s,
            "step_min_requests": spec.step_min_requests,
            "analysis": {"window": a.window_s, "confidence": a.confidence,
                         "attainment_tolerance": a.attainment_tolerance, "error_tolerance": a.error_tolerance,
                         "shed_tolerance": a.shed_tolerance, "p99_ratio_tolerance": a.p99_ratio_tolerance,
                         "p99_min_delta": a.p99_min_delta_s,
                         "min_samples": a.min_samples},
            "shadow": {"sample": spec.shadow_sample, "duration": spec.shadow_duration_s}}


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    _require(isinstance(value, Mapping), f"{name} must be a mapping")
    return value


def _number(value: Any, name: str) -> float:
    _require(isinstance(value, (int, float)) and not isinstance(value, bool), f"{name} must be a number, got {value!r}")
    return float(value)


def _int(data: Mapping[str, Any], key: str, default: int) -> int:
    value = data.get(key, default)
    _require(isinstance(value, int) and not isinstance(value, bool), f"{key} must be an integer, got {value!r}")
    return int(value)


def _duration(data: Mapping[str, Any], key: str, default_s: float) -> float:
    value = data.get(key, default_s)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return parse_duration_s(value)
    except ValueError as exc:
        raise ConfigError(f"rollout spec: {key}: {exc}") from None

