"""SLO classes: the latency and availability targets a request is served under.

A request belongs to one class (``resolve_class``). The class's targets decide
whether the request "met its SLO" (tracker), how long admission lets it wait
(admission) and its scheduling priority (engine queue policy ``priority``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from servewise.errors import InvalidRequestError, PermissionDeniedError

_CLASS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _positive(value: float | None) -> bool:
    return value is None or (isinstance(value, (int, float)) and math.isfinite(value) and value > 0)


@dataclass(frozen=True)
class SLOClass:
    """Targets of one class. A served request meets the SLO when each target given holds for it."""

    name: str  # e.g. "interactive"; letters, digits, "_", "-", "."
    # Time-to-first-token target in seconds; None = no TTFT target (admission then sheds only on caps).
    ttft_s: float | None
    # The TTFT target is a percentile objective: p(ttft_percentile) of TTFT ≤ ttft_s, e.g. 99.0.
    ttft_percentile: float = 99.0
    tpot_s: float | None = None  # time per output token after the first (mean inter-token gap), seconds
    e2e_s: float | None = None  # whole-request latency, seconds
    availability: float = 0.995  # fraction of requests that must be good, in (0, 1)
    priority: int = 0  # engine scheduling rank; lower = more urgent
    # Admission sheds when predicted TTFT > ttft_s × admission_slack (≥ 1; batch classes use more).
    admission_slack: float = 1.0
    max_queue_wait_s: float | None = None  # shed when the predicted wait before prefill exceeds this

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and bool(_CLASS_NAME.match(self.name)),
                 f"SLO class name must be 1-64 letters, digits, '_', '-' or '.', got {self.name!r}")
        for attr in ("ttft_s", "tpot_s", "e2e_s", "max_queue_wait_s"):
            _require(_positive(getattr(self, attr)),
                     f"SLO class {self.name!r}: {attr} must be positive, got {getattr(self, attr)!r}")
        _require(0.0 < self.ttft_percentile < 100.0,
                 f"SLO class {self.name!r}: ttft_percentile must be in (0, 100), got {self.ttft_percentile!r}")
        _require(0.0 < self.availability < 1.0,
                 f"SLO class {self.name!r}: availability must be in (0, 1), got {self.availability!r}")
        _require(isinstance(self.priority, int) and not isinstance(self.priority, bool),
                 f"SLO class {self.name!r}: priority must be an integer, got {self.priority!r}")
        _require(math.isfinite(self.admission_slack) and self.admission_slack >= 1.0,
                 f"SLO class {self.name!r}: admission_slack must be ≥ 1, got {self.admission_slack!r}")

    @property
    def error_budget(self) -> float:
        """The fraction of requests allowed to be bad: 1 - availability."""
        return 1.0 - self.availability

    def is_met(self, ttft_s: float | None, tpot_s: float | None, e2e_s: float | None) -> bool:
        """Whether one served request met every target. A missing measurement (no TPOT for a
        one-token answer) cannot fail its target; a missing TTFT falls back to the E2E latency."""
        ttft = ttft_s if ttft_s is not None else e2e_s
        checks = ((self.ttft_s, ttft), (self.tpot_s, tpot_s), (self.e2e_s, e2e_s))
        return all(target is None or value is None or value <= target for target, value in checks)


@dataclass(frozen=True)
class SLOConfig:
    """All classes the server knows and how a request picks one."""

    classes: tuple[SLOClass, ...]  # at least one; names unique
    default_class: str  # class of requests whose key names none (and of anonymous requests)
    # Whether a client may pick its class (header or the body's `priority` field) over its key's.
    allow_client_class: bool = False
    _by_name: Mapping[str, SLOClass] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require(len(self.classes) >= 1, "an SLO config needs at least one class")
        by_name = {c.name: c for c in self.classes}
        _require(len(by_name) == len(self.classes),
                 f"SLO class names must be unique, got {[c.name for c in self.classes]}")
        _require(self.default_class in by_name,
                 f"default class {self.default_class!r} is not one of {sorted(by_name)}")
        object.__setattr__(self, "_by_name", by_name)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def get(self, name: str) -> SLOClass | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> SLOClass:
        return self._by_name[name]


def default_slo_config() -> SLOConfig:
    """The built-in classes used when the operator gives none.

    interactive: chat-like traffic, p99 TTFT ≤ 2 s, 150 ms per token, 99.5% available.
    batch: offline jobs, p90 TTFT ≤ 30 s, 1 s per token, 99% available, scheduled after
    interactive and allowed to wait 3× its TTFT target before being shed.
    """
    interactive = SLOClass(name="interactive", ttft_s=2.0, ttft_percentile=99.0, tpot_s=0.15,
                           availability=0.995, priority=0, admission_slack=1.25)
    batch = SLOClass(name="batch", ttft_s=30.0, ttft_percentile=90.0, tpot_s=1.0,
                     availability=0.99, priority=10, admission_slack=3.0)
    return SLOConfig(classes=(interactive, batch), default_class="interactive", allow_client_class=False)


def resolve_class(config: SLOConfig, key_class: str | None, requested: str | None) -> SLOClass:
    """The class a request is served under.

    - ``requested`` (the client's header or body ``priority``) wins only when
      ``config.allow_client_class``; otherwise it is ignored (after validation).
      A key with a class may ask for a less urgent class, never a more urgent one:
      PermissionDeniedError (403) names both.
    - else the API key's class, else the config's default class.
    - an unknown requested name is the client's mistake: InvalidRequestError (400).
    - an unknown key class is the operator's: ValueError (check keys at startup with
      ``ApiKeyStore.check_classes``).
    """
    if requested is not None and config.get(requested) is None:
        raise InvalidRequestError(
            f"unknown SLO class {requested!r}; known classes: {', '.join(config.class_names)}",
            param="priority")
    keyed = None
    if key_class is not None:
        keyed = config.get(key_class)
        if keyed is None:
            raise ValueError(f"API key names SLO class {key_class!r}, which the SLO config does not define")
    if requested is not None and config.allow_client_class:
        wanted = config[requested]
        if keyed is not None and wanted.priority < keyed.priority:
            raise PermissionDeniedError(
                f"this API key is served as SLO class {keyed.name!r} (priority {keyed.priority}) and may not "
                f"ask for the more urgent {wanted.name!r} (priority {wanted.priority})", param="priority")
        return wanted
    return keyed if keyed is not None else config[config.default_class]
