"""One request's raw measurements, as the client saw them.

Every time is in seconds from ``time.perf_counter``. ``send_s`` is relative to
the start of the load point; token times, TTFT and E2E are relative to the
request's own send time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

# Decimal places kept for times in results.json: microseconds.
_TIME_DIGITS = 6


class Outcome(str, enum.Enum):
    """How a request ended; exactly one per request."""

    OK = "ok"  # 200, the stream completed ([DONE] or a finish_reason), no error event
    SHED = "shed"  # 429 or 503: the server refused the load (Retry-After or not)
    CLIENT_ERROR = "client_error"  # any other non-200 status below 500
    SERVER_ERROR = "server_error"  # 5xx other than 503
    TIMEOUT = "timeout"  # no complete answer within the request timeout
    CONNECTION_ERROR = "connection_error"  # refused, reset or cut mid-stream
    STREAM_ERROR = "stream_error"  # an `error` event or body inside a 200 SSE stream
    INCOMPLETE = "incomplete"  # the 200 stream ended without [DONE] or a finish_reason


SHED_STATUSES = (429, 503)


def outcome_for_status(http_status: int) -> Outcome:
    """The outcome of a request answered with a non-200 status."""
    if http_status in SHED_STATUSES:
        return Outcome.SHED
    if http_status >= 500:
        return Outcome.SERVER_ERROR
    return Outcome.CLIENT_ERROR


@dataclass
class RequestRecord:
    """Everything measured for one request; the unit of results.json's raw data."""

    index: int  # position in the point's schedule, warm-up requests included
    scheduled_s: float  # when the load shape wanted it sent, seconds after the point's start
    send_s: float  # when it was actually sent, seconds after the point's start
    outcome: Outcome
    kind: str = "default"  # workload class of the request, e.g. "long" or "chat" in the mixed workload
    http_status: int | None = None  # None when no response headers arrived
    ttft_s: float | None = None  # send → first non-empty content chunk; None if none arrived
    e2e_s: float | None = None  # send → last SSE event (or the error)
    # Arrival of each non-empty content chunk, seconds after send; chunks that arrive in one
    # network read share a time.
    token_times_s: list[float] = field(default_factory=list)
    num_input_tokens: int | None = None  # usage.prompt_tokens, else the workload's own count
    num_output_tokens: int = 0  # usage.completion_tokens, else the number of content chunks
    num_cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens (prefix-cache hits)
    usage_reported: bool = False  # token counts come from the server's usage chunk
    retry_after: str | None = None  # Retry-After header of a non-200 answer, verbatim
    error: str | None = None  # short description of any outcome but OK
    warmup: bool = False  # sent during warm-up: kept in the raw data, left out of summaries

    @property
    def accepted(self) -> bool:
        """The server took the request on: it answered with 200 headers."""
        return self.http_status == 200

    @property
    def lost(self) -> bool:
        """Accepted, then never completed: cut, errored or timed out mid-stream."""
        return self.accepted and self.outcome is not Outcome.OK

    @property
    def end_s(self) -> float:
        """When the request finished, seconds after the point's start."""
        return self.send_s + (self.e2e_s or 0.0)

    @property
    def itls_s(self) -> list[float]:
        """Gaps between consecutive content chunks."""
        return [b - a for a, b in pairwise(self.token_times_s)]

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first: (e2e − ttft) / (output tokens − 1)."""
        if self.ttft_s is None or self.e2e_s is None or self.num_output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.num_output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        def rounded(x: float | None) -> float | None:
            return None if x is None else round(x, _TIME_DIGITS)

        return {
            "index": self.index,
            "kind": self.kind,
            "scheduled_s": rounded(self.scheduled_s),
            "send_s": rounded(self.send_s),
            "outcome": self.outcome.value,
            "http_status": self.http_status,
            "ttft_s": rounded(self.ttft_s),
            "e2e_s": rounded(self.e2e_s),
            "token_times_s": [round(t, _TIME_DIGITS) for t in self.token_times_s],
            "num_input_tokens": self.num_input_tokens,
            "num_output_tokens": self.num_output_tokens,
            "num_cached_tokens": self.num_cached_tokens,
            "usage_reported": self.usage_reported,
            "retry_after": self.retry_after,
            "error": self.error,
            "warmup": self.warmup,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        fields = dict(data)
        fields["outcome"] = Outcome(fields["outcome"])
        fields["token_times_s"] = list(fields.get("token_times_s", []))
        return cls(**fields)
