"""profile.json: a step-cost model with the machine, backend and model it was measured on.

Versioned by ``schema_version``; ``Profile.load`` refuses what it cannot read with a
``ProfileError`` that says why, and ``Profile.check`` refuses a profile measured on
another machine or model unless the caller explicitly allows it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from servewise.plan.fit import FitError, StepSample
from servewise.plan.machine import MachineInfo
from servewise.plan.serving import ServingCalibration
from servewise.plan.step_cost import StepCostModel, StepShape

SCHEMA_VERSION = 1
TOOL_NAME = "servewise-profile"


class ProfileError(ValueError):
    """A profile that cannot be used for this plan; the message says why and what to do."""


@dataclass(frozen=True)
class ModelIdentity:
    name: str  # display name (GGUF stem or directory name)
    path: str  # where it was loaded from when profiled
    fingerprint: str  # machine.model_fingerprint of the file(s)
    arch: dict[str, Any]  # ModelArchConfig fields: the KV-cache size per token derives from them


@dataclass(frozen=True)
class BackendInfo:
    device: str  # cpu, cuda, cuda:N
    linear_backend: str  # auto, fp32, int8
    threads: int  # torch threads the engine ran with
    kv_cache_dtype: str  # the engine flag (auto = fp16 on CPU unless fp32 linears)

    @property
    def label(self) -> str:
        return f"{self.device} {self.linear_backend}, {self.threads} threads"


@dataclass(frozen=True)
class ProfiledRange:
    """The largest step shapes measured: predictions beyond them extrapolate the fit."""

    max_tokens: int
    max_sampled: int
    max_paged_pairs: int
    max_dense_pairs: int

    def covers(self, shape: StepShape) -> bool:
        return (shape.num_tokens <= self.max_tokens and shape.num_sampled <= self.max_sampled
                and shape.paged_pairs <= self.max_paged_pairs and shape.dense_pairs <= self.max_dense_pairs)

    @classmethod
    def of(cls, shapes: list[StepShape]) -> ProfiledRange:
        return cls(max(s.num_tokens for s in shapes), max(s.num_sampled for s in shapes),
                   max(s.paged_pairs for s in shapes), max(s.dense_pairs for s in shapes))


@dataclass(frozen=True)
class Profile:
    machine: MachineInfo
    model: ModelIdentity
    backend: BackendInfo
    cost: StepCostModel
    fit: FitError  # of the forward model
    host_mape: float  # of the host-overhead line, on its samples
    ranges: ProfiledRange
    created_at: str  # ISO 8601, UTC
    duration_s: float  # how long profiling took
    samples: tuple[StepSample, ...] = ()  # the measured steps (kept to audit or refit)
    serving: ServingCalibration | None = None  # the server against the engine alone (None: not measured)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "tool": TOOL_NAME, "created_at": self.created_at,
                "duration_s": round(self.duration_s, 3), "machine": self.machine.to_dict(),
                "model": asdict(self.model), "backend": asdict(self.backend), "cost_model": self.cost.to_dict(),
                "fit": asdict(self.fit), "host_mape": self.host_mape, "ranges": asdict(self.ranges),
                "serving": None if self.serving is None else self.serving.to_dict(),
                "samples": [[*asdict(s.shape).values(), s.forward_s] for s in self.samples]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        version = data.get("schema_version")
        if data.get("tool") != TOOL_NAME or not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
            raise ProfileError(f"not a servewise profile this build reads (tool {data.get('tool')!r}, "
                               f"schema_version {version!r}; expected {TOOL_NAME!r} 1..{SCHEMA_VERSION})")
        samples = tuple(StepSample(StepShape(*(int(v) for v in row[:5])), float(row[5]))
                        for row in data.get("samples", []))
        return cls(machine=MachineInfo.from_dict(data["machine"]), model=ModelIdentity(**data["model"]),
                   backend=BackendInfo(**data["backend"]), cost=StepCostModel.from_dict(data["cost_model"]),
                   fit=FitError(**data["fit"]), host_mape=float(data["host_mape"]),
                   ranges=ProfiledRange(**data["ranges"]), created_at=str(data["created_at"]),
                   duration_s=float(data["duration_s"]), samples=samples,
                   serving=ServingCalibration.from_dict(data["serving"]) if data.get("serving") else None)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ProfileError(f"cannot read profile {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ProfileError(f"{path} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ProfileError(f"{path} is not a servewise profile")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ProfileError):
                raise ProfileError(f"{path}: {exc}") from None
            raise ProfileError(f"{path} is not a valid servewise profile ({type(exc).__name__}: {exc})") from None

    def check(self, machine: MachineInfo, model_fingerprint: str, *, allow_foreign: bool = False) -> list[str]:
        """Refuse (ProfileError) a profile of another machine or model; returns the differences that
        ``allow_foreign`` let through, for the report."""
        problems = [f"machine: {d}" for d in self.machine.differences(machine)]
        other = ["machine"] if problems else []
        if self.model.fingerprint != model_fingerprint:
            problems.append(f"model: this plan's model is not the profiled {self.model.name!r} ({self.model.path})")
            other.append("model")
        if problems and not allow_foreign:
            raise ProfileError(f"the profile was measured on another {' and '.join(other)}: {'; '.join(problems)}. "
                               "Run `servewise profile` here with this model, or pass --allow-foreign-profile "
                               "to plan with it anyway")
        return problems
