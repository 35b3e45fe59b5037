"""Per-class SLO attainment, goodput and error budgets over sliding windows.

Definitions (per class, per window):

- served: requests that finished successfully (outcome SUCCESS).
- met: served requests within every target of the class (TTFT, TPOT, E2E).
- attainment = met / served (None when nothing was served).
- goodput = met / seconds covered by the window.
- eligible = served + server errors + shed; client errors (4xx, rate limits, client
  disconnects) are the client's doing and count nowhere. With
  ``shed_counts_as_bad=False`` shed requests are left out too.
- bad = server errors + shed + served-but-missed-SLO: a request is good only when it
  was served *and* met its latency targets.
- burn rate = (bad / eligible) / (1 - availability): 1 spends the budget exactly at the
  allowed pace, 10 spends a window's budget in a tenth of the window.
- error budget remaining = 1 - burn rate: 1 = untouched, 0 = spent, < 0 = overspent.
- TTFT percentile: the class's percentile (e.g. p99) of served requests' TTFT, from a
  log histogram (±10% relative); ``ttft_target_met`` compares it with the target.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from servewise.slo.samples import PREFIX, MetricSample
from servewise.slo.spec import SLOClass, SLOConfig
from servewise.slo.windows import (
    NUM_TTFT_BINS,
    RingWindow,
    WindowCounts,
    WindowSpec,
    histogram_percentile,
    ttft_bin,
)


class Outcome(str, enum.Enum):
    """How a request ended, as the server maps it."""

    SUCCESS = "success"  # served to the end (any finish reason)
    SERVER_ERROR = "server_error"  # 5xx: engine error, internal error, unavailable
    SHED = "shed"  # 429 OverloadedError from admission control
    CLIENT_ERROR = "client_error"  # 4xx incl. RateLimitError, and client disconnects


DEFAULT_WINDOWS = (WindowSpec("1m", 60.0), WindowSpec("5m", 300.0), WindowSpec("1h", 3600.0))


@dataclass(frozen=True)
class TrackerConfig:
    windows: tuple[WindowSpec, ...] = DEFAULT_WINDOWS  # names unique
    goodput_window: str = "1m"  # window of the goodput gauge (the most current view)
    budget_window: str = "1h"  # window of the error-budget gauge (the longest view)
    shed_counts_as_bad: bool = True  # a shed request is unavailability from the client's view

    def __post_init__(self) -> None:
        names = [w.name for w in self.windows]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"tracker windows need unique names, got {names}")
        for attr in ("goodput_window", "budget_window"):
            if getattr(self, attr) not in names:
                raise ValueError(f"{attr} {getattr(self, attr)!r} is not one of the windows {names}")


@dataclass(frozen=True)
class WindowStats:
    """One class over one window; every ratio is exact from the counts except the TTFT percentile."""

    slo_class: str
    window: str  # window name, e.g. "5m"
    window_s: float  # nominal length
    span_s: float  # seconds actually covered (shorter right after start)
    counts: WindowCounts
    attainment_ratio: float | None  # met / served
    goodput_rps: float  # met requests per second
    ttft_percentile: float  # which percentile, e.g. 99.0
    ttft_percentile_s: float | None  # its value over served requests
    ttft_target_s: float | None
    ttft_target_met: bool | None  # None when no target or no data
    bad_ratio: float  # bad / eligible
    burn_rate: float  # bad_ratio / allowed bad ratio
    error_budget_remaining_ratio: float  # 1 - burn_rate

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["counts"] = asdict(self.counts)
        return out


@dataclass
class _ClassWindows:
    slo: SLOClass
    rings: dict[str, RingWindow] = field(default_factory=dict)


class SLOTracker:
    """Records finished requests and reports SLO attainment; owned by one thread/task."""

    def __init__(self, slo_config: SLOConfig, config: TrackerConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or TrackerConfig()
        self._clock = clock
        self._started_s = clock()
        self._classes = {c.name: _ClassWindows(c, {w.name: RingWindow(w) for w in self.config.windows})
                         for c in slo_config.classes}

    def record(self, slo_class: str, outcome: Outcome, *, ttft_s: float | None = None,
               tpot_s: float | None = None, e2e_s: float | None = None) -> bool:
        """One finished request; returns whether it was good (served and met its SLO)."""
        entry = self._classes.get(slo_class)
        if entry is None:
            raise ValueError(f"unknown SLO class {slo_class!r}; known: {sorted(self._classes)}")
        outcome = Outcome(outcome)  # a plain "success" string works too
        met = outcome is Outcome.SUCCESS and entry.slo.is_met(ttft_s, tpot_s, e2e_s)
        ttft = ttft_s if ttft_s is not None else e2e_s
        ttft_met = ttft is None or entry.slo.ttft_s is None or ttft <= entry.slo.ttft_s
        now = self._clock()
        for ring in entry.rings.values():
            bucket = ring.bucket_at(now)
            c = bucket.counts
            if outcome is Outcome.SUCCESS:
                c.num_success += 1
                c.num_met += met
                c.num_ttft_met += ttft_met
                if ttft is not None:
                    if bucket.ttft_bins is None:
                        bucket.ttft_bins = [0] * NUM_TTFT_BINS
                    bucket.ttft_bins[ttft_bin(ttft)] += 1
            elif outcome is Outcome.SERVER_ERROR:
                c.num_server_error += 1
            elif outcome is Outcome.SHED:
                c.num_shed += 1
            else:
                c.num_client_error += 1
        return met

    def window_stats(self, slo_class: str, window: str, now_s: float | None = None) -> WindowStats:
        entry = self._classes[slo_class]
        ring = entry.rings[window]
        now = self._clock() if now_s is None else now_s
        counts, bins = ring.totals(now)
        span_s = max(ring.span_s(now, self._started_s), 1e-9)
        slo = entry.slo
        num_shed_bad = counts.num_shed if self.config.shed_counts_as_bad else 0
        eligible = counts.num_success + counts.num_server_error + num_shed_bad
        bad = counts.num_server_error + num_shed_bad + (counts.num_success - counts.num_met)
        bad_ratio = bad / eligible if eligible else 0.0
        burn_rate = bad_ratio / slo.error_budget
        p_s = histogram_percentile(bins, slo.ttft_percentile)
        return WindowStats(
            slo_class=slo_class, window=window, window_s=ring.spec.length_s, span_s=span_s, counts=counts,
            attainment_ratio=counts.num_met / counts.num_success if counts.num_success else None,
            goodput_rps=counts.num_met / span_s, ttft_percentile=slo.ttft_percentile, ttft_percentile_s=p_s,
            ttft_target_s=slo.ttft_s,
            ttft_target_met=None if p_s is None or slo.ttft_s is None else _ttft_objective_met(counts, slo),
            bad_ratio=bad_ratio, burn_rate=burn_rate, error_budget_remaining_ratio=1.0 - burn_rate)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state of every class and window (``GET /v1/slo``)."""
        now = self._clock()  # one instant for the whole snapshot
        classes: dict[str, Any] = {}
        for name, entry in self._classes.items():
            s = entry.slo
            classes[name] = {
                "targets": {"ttft_s": s.ttft_s, "ttft_percentile": s.ttft_percentile, "tpot_s": s.tpot_s,
                            "e2e_s": s.e2e_s, "availability": s.availability, "priority": s.priority},
                "windows": {w: _json_safe(self.window_stats(name, w, now).to_dict()) for w in entry.rings},
            }
        return {"time_s": now, "classes": classes}

    def metric_samples(self) -> Iterator[MetricSample]:
        """Gauges: attainment per class and window (skipped while nothing was served), goodput over
        ``goodput_window``, error budget remaining over ``budget_window``, burn rate per window."""
        now = self._clock()
        for name, entry in self._classes.items():
            for window in entry.rings:
                stats = self.window_stats(name, window, now)
                labels = {"slo_class": name, "window": window}
                if stats.attainment_ratio is not None:
                    yield MetricSample(PREFIX + "slo_attainment_ratio", labels, stats.attainment_ratio)
                yield MetricSample(PREFIX + "error_budget_burn_rate", labels, stats.burn_rate)
                if window == self.config.goodput_window:
                    yield MetricSample(PREFIX + "goodput_requests_per_second", {"slo_class": name},
                                       stats.goodput_rps)
                if window == self.config.budget_window:
                    yield MetricSample(PREFIX + "error_budget_remaining_ratio", {"slo_class": name},
                                       stats.error_budget_remaining_ratio)


def _ttft_objective_met(counts: WindowCounts, slo: SLOClass) -> bool:
    """Exact check of "p(q) TTFT ≤ target": at least q% of served requests were within it."""
    return counts.num_ttft_met >= math.ceil(slo.ttft_percentile / 100.0 * counts.num_success - 1e-9)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value
