"""Sliding windows of request counts as rings of time buckets (bounded memory, O(1) record).

A window of ``length_s`` is ``num_buckets`` buckets of ``length_s / num_buckets``
seconds. A bucket holds counts and a log-binned TTFT histogram of the requests
that finished in it. The window at time ``now`` is the ``num_buckets`` most recent
buckets, the current (partial) one included, so a record leaves the window between
``length_s - bucket_s`` and ``length_s`` seconds after it was made.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, fields

# TTFT histogram upper edges: 1 ms × 2^(i/4), i = 0..80, i.e. 1 ms to ~17.5 min, each bin
# ~19% wide; one more bin above the last edge catches the rest.
TTFT_BIN_EDGES_S: tuple[float, ...] = tuple(0.001 * 2.0 ** (i / 4) for i in range(81))
NUM_TTFT_BINS = len(TTFT_BIN_EDGES_S) + 1


@dataclass(frozen=True)
class WindowSpec:
    name: str  # label value, e.g. "1m"
    length_s: float  # how far back the window reaches
    num_buckets: int = 60  # resolution: records expire one bucket (length_s / num_buckets) at a time

    def __post_init__(self) -> None:
        if not (self.name and math.isfinite(self.length_s) and self.length_s > 0):
            raise ValueError(f"window needs a name and a positive length, got {self!r}")
        if not 1 <= self.num_buckets <= 3600:
            raise ValueError(f"window {self.name!r}: num_buckets must be in [1, 3600], got {self.num_buckets}")

    @property
    def bucket_s(self) -> float:
        return self.length_s / self.num_buckets


@dataclass(slots=True)
class WindowCounts:
    """Requests of one class finished in a span of time, by outcome."""

    num_success: int = 0  # served to the end
    num_met: int = 0  # of which met every target of the class
    num_ttft_met: int = 0  # of which met the TTFT target (the percentile objective's input)
    num_server_error: int = 0  # failed on the server's side (5xx)
    num_shed: int = 0  # refused by admission control (429 overloaded)
    num_client_error: int = 0  # the client's fault (4xx, rate limits, disconnects); outside the SLO

    def add(self, other: WindowCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def clear(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)


@dataclass(slots=True)
class _Bucket:
    index: int  # floor(time / bucket_s) of the span this bucket holds
    counts: WindowCounts
    ttft_bins: list[int] | None = None  # allocated on the first served request with a TTFT


def ttft_bin(ttft_s: float) -> int:
    return bisect.bisect_left(TTFT_BIN_EDGES_S, ttft_s)


def histogram_percentile(bins: list[int], percentile: float) -> float | None:
    """The ``percentile`` (0-100) of a TTFT histogram, interpolated linearly inside its bin."""
    total = sum(bins)
    if total == 0:
        return None
    rank = percentile / 100.0 * total
    seen = 0
    for i, count in enumerate(bins):
        if count and seen + count >= rank:
            if i == len(TTFT_BIN_EDGES_S):
                return TTFT_BIN_EDGES_S[-1]  # overflow bin: only its lower edge is known
            lower = TTFT_BIN_EDGES_S[i - 1] if i > 0 else 0.0
            return lower + (TTFT_BIN_EDGES_S[i] - lower) * (rank - seen) / count
        seen += count
    return TTFT_BIN_EDGES_S[-1]


class RingWindow:
    """One window of one class; not thread-safe (one owner records and reads)."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self._buckets: list[_Bucket | None] = [None] * spec.num_buckets

    def _index(self, now_s: float) -> int:
        return math.floor(now_s / self.spec.bucket_s)

    def bucket_at(self, now_s: float) -> _Bucket:
        """The current bucket, recycled in place once its slot's previous span has expired."""
        index = self._index(now_s)
        slot = index % self.spec.num_buckets
        bucket = self._buckets[slot]
        if bucket is None:
            bucket = self._buckets[slot] = _Bucket(index, WindowCounts())
        elif bucket.index != index:
            bucket.index = index
            bucket.counts.clear()
            if bucket.ttft_bins is not None:
                bucket.ttft_bins[:] = [0] * NUM_TTFT_BINS
        return bucket

    def totals(self, now_s: float) -> tuple[WindowCounts, list[int]]:
        """Counts and TTFT histogram over the window ending at ``now_s``."""
        current = self._index(now_s)
        oldest = current - self.spec.num_buckets + 1
        counts = WindowCounts()
        bins = [0] * NUM_TTFT_BINS
        for bucket in self._buckets:
            if bucket is None or not oldest <= bucket.index <= current:
                continue
            counts.add(bucket.counts)
            if bucket.ttft_bins is not None:
                for i, n in enumerate(bucket.ttft_bins):
                    if n:
                        bins[i] += n
        return counts, bins

    def span_s(self, now_s: float, since_s: float) -> float:
        """Seconds of time the window covers, not reaching back before ``since_s`` (tracker start)."""
        start_s = (self._index(now_s) - self.spec.num_buckets + 1) * self.spec.bucket_s
        return now_s - max(start_s, since_s)
