"""Token-length distributions of synthetic workloads: fixed, uniform, normal, lognormal.

Written as ``KIND:ARGS`` on the command line: ``128`` or ``fixed:128``,
``uniform:64,512`` (bounds included), ``normal:256,64`` (mean, std),
``lognormal:256,0.6`` (median, sigma of the log). Samples are rounded and
clipped to ``[1, max_tokens]``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

KINDS = ("fixed", "uniform", "normal", "lognormal")
# Clip of every sampled length: far above any context length, a guard against typos.
DEFAULT_MAX_TOKENS = 1_000_000


@dataclass(frozen=True)
class LengthDistribution:
    kind: str  # one of KINDS
    a: float  # fixed: the length; uniform: low; normal: mean; lognormal: median
    b: float = 0.0  # uniform: high; normal: std; lognormal: sigma of log(length); fixed: unused
    max_tokens: int = DEFAULT_MAX_TOKENS  # samples are clipped to [1, max_tokens]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown length distribution {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not self.a >= 1:
            raise ValueError(f"{self.kind} length must be ≥ 1, got {self.a:g}")
        if self.kind == "uniform" and self.b < self.a:
            raise ValueError(f"uniform bounds must be low ≤ high, got {self.a:g},{self.b:g}")
        if self.kind in ("normal", "lognormal") and self.b < 0:
            raise ValueError(f"{self.kind} spread must be ≥ 0, got {self.b:g}")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be ≥ 1")

    @property
    def mean(self) -> float:
        """The mean before rounding and clipping."""
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        if self.kind == "lognormal":
            return self.a * math.exp(self.b**2 / 2)
        return self.a

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            return min(self.max_tokens, rng.randint(math.ceil(self.a), math.floor(self.b)))
        elif self.kind == "normal":
            value = rng.gauss(self.a, self.b)
        else:
            value = rng.lognormvariate(math.log(self.a), self.b)
        return max(1, min(self.max_tokens, round(value)))

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.a:g}"
        return f"{self.kind}:{self.a:g},{self.b:g}"


def parse_length(text: str) -> LengthDistribution:
    """'128', 'fixed:128', 'uniform:64,512', 'normal:256,64', 'lognormal:256,0.6'."""
    kind, sep, args = text.strip().partition(":")
    if not sep:
        kind, args = "fixed", kind
    try:
        values = [float(v) for v in args.split(",")]
    except ValueError:
        raise ValueError(f"bad length distribution {text!r}: numbers expected after '{kind}:'") from None
    expected = 1 if kind == "fixed" else 2
    if len(values) != expected:
        raise ValueError(f"bad length distribution {text!r}: {kind} takes {expected} number(s)")
    return LengthDistribution(kind, values[0], values[1] if expected == 2 else 0.0)
