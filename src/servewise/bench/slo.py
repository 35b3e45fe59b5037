"""Latency SLOs of a run (``--slo ttft=1s,tpot=100ms``) and the per-request check."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from servewise.bench.records import Outcome, RequestRecord

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)\s*$")
_UNIT_S = {"s": 1.0, "ms": 1e-3}


@dataclass(frozen=True)
class SloSpec:
    """Per-request latency targets; None = no target on that metric."""

    ttft_s: float | None = None  # time to first token
    tpot_s: float | None = None  # time per output token after the first
    e2e_s: float | None = None  # whole request
    itl_s: float | None = None  # every gap between streamed chunks (the request's largest gap)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not value > 0:
                raise ValueError(f"SLO {f.name} must be positive, got {value}")

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def met_by(self, record: RequestRecord) -> bool:
        """A request meets the SLO when it succeeded and is within every target given."""
        if record.outcome is not Outcome.OK:
            return False
        # A request that streamed no content has no first token: its whole latency stands in.
        ttft_s = record.ttft_s if record.ttft_s is not None else record.e2e_s
        checks = (
            (self.ttft_s, ttft_s),
            (self.tpot_s, record.tpot_s),
            (self.e2e_s, record.e2e_s),
            (self.itl_s, max(record.itls_s, default=None)),
        )
        return all(target is None or value is None or value <= target for target, value in checks)

    def describe(self) -> str:
        parts = [f"{f.name[:-2]}≤{_format_s(getattr(self, f.name))}"
                 for f in fields(self) if getattr(self, f.name) is not None]
        return ", ".join(parts) or "none"


def _format_s(value: float) -> str:
    return f"{value * 1e3:g}ms" if value < 1 else f"{value:g}s"


def parse_duration_s(text: str) -> float:
    """'100ms' → 0.1, '1.5s' → 1.5; a unit is required."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected a duration with a unit (s or ms), like 1s or 100ms; got {text!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_slo(text: str) -> SloSpec:
    """'ttft=1s,tpot=100ms[,e2e=..][,itl=..]' → SloSpec."""
    targets: dict[str, float] = {}
    names = {f.name[:-2] for f in fields(SloSpec)}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in names:
            raise ValueError(f"bad SLO {part!r}: expected NAME=DURATION with NAME one of {sorted(names)}")
        targets[f"{name}_s"] = parse_duration_s(value)
    return SloSpec(**targets)
