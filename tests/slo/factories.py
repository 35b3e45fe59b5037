"""Small factories for SLO unit tests: a fake clock and ready-made classes."""

from __future__ import annotations

from dataclasses import dataclass

from servewise.slo.spec import SLOClass, SLOConfig


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def make_class(name: str = "interactive", *, ttft_s: float | None = 1.0, **kwargs) -> SLOClass:
    return SLOClass(name=name, ttft_s=ttft_s, **kwargs)


def make_config(*classes: SLOClass, allow_client_class: bool = False) -> SLOConfig:
    classes = classes or (make_class("interactive", tpot_s=0.1, availability=0.99),
                          make_class("batch", ttft_s=20.0, priority=10, admission_slack=3.0, availability=0.9))
    return SLOConfig(classes=classes, default_class=classes[0].name, allow_client_class=allow_client_class)


@dataclass(frozen=True)
class FakeStep:
    """The fields of engine.stats.StepRecord the cost model reads."""

    duration_s: float
    num_tokens: int
    num_prefill_tokens: int
    num_requests: int
    end_s: float
