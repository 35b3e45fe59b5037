"""Per-tenant rate limits: token buckets for requests and tokens per minute, a concurrency cap.

A bucket of a per-minute limit L holds at most L and refills at L/60 per second, so a
tenant may burst its whole minute and then runs at the steady rate.

Tokens: ``acquire`` reserves ``prompt_tokens + max_tokens`` (the most the request can
use, so a burst of long answers cannot overshoot the limit); ``release(lease,
used_tokens=...)`` gives back what the request did not use once the real count is
known (capped at the bucket's size). The server must reserve a finite max_tokens (the
context length when the client gives none).

Retry-After is the exact time until every exhausted limit can take the request, as a
float the server rounds up; for the concurrency cap it is ``concurrency_retry_after_s``
since the time until an in-flight request ends is unknown.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from servewise.errors import InvalidRequestError, RateLimitError
from servewise.slo.tenants import Tenant, TenantLimits


@dataclass
class TokenBucket:
    capacity: float  # most it can hold (the per-minute limit)
    refill_per_s: float  # capacity / 60
    level: float  # current content; may go below 0 when a request used more than it reserved
    updated_s: float  # clock time of ``level``

    @classmethod
    def per_minute(cls, limit: int, now_s: float) -> TokenBucket:
        return cls(capacity=float(limit), refill_per_s=limit / 60.0, level=float(limit), updated_s=now_s)

    def refill(self, now_s: float) -> None:
        if now_s > self.updated_s:
            self.level = min(self.capacity, self.level + (now_s - self.updated_s) * self.refill_per_s)
            self.updated_s = now_s

    def wait_s(self, amount: float, now_s: float) -> float:
        """Seconds until the bucket holds ``amount`` (0 if it does now)."""
        self.refill(now_s)
        return max(0.0, (amount - self.level) / self.refill_per_s)

    def take(self, amount: float) -> None:
        self.level -= amount

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


@dataclass(frozen=True)
class Lease:
    """Proof that a request passed the limits; hand it back with ``RateLimiter.release``."""

    lease_id: int
    tenant: str  # tenant name
    reserved_tokens: int  # taken from the tokens-per-minute bucket at acquire


@dataclass
class _TenantState:
    limits: TenantLimits
    requests: TokenBucket | None  # None = unlimited
    tokens: TokenBucket | None
    num_in_flight: int = 0


class RateLimiter:
    """Limits of every tenant; one owner (the server's event loop), not thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, concurrency_retry_after_s: float = 1.0) -> None:
        if concurrency_retry_after_s <= 0:
            raise ValueError("concurrency_retry_after_s must be positive")
        self._clock = clock
        self._concurrency_retry_after_s = concurrency_retry_after_s
        self._states: dict[str, _TenantState] = {}
        self._open: dict[int, Lease] = {}
        self._ids = itertools.count(1)

    def _state(self, tenant: Tenant, now_s: float) -> _TenantState:
        state = self._states.get(tenant.name)
        if state is None or state.limits != tenant.limits:  # new tenant, or its limits were reloaded
            lim = tenant.limits
            state = _TenantState(
                limits=lim,
                requests=None if lim.requests_per_minute is None else TokenBucket.per_minute(lim.requests_per_minute,
                                                                                             now_s),
                tokens=None if lim.tokens_per_minute is None else TokenBucket.per_minute(lim.tokens_per_minute, now_s),
                num_in_flight=state.num_in_flight if state is not None else 0)
            self._states[tenant.name] = state
        return state

    def acquire(self, tenant: Tenant, tokens: int) -> Lease:
        """Take one request and ``tokens`` from the tenant's limits, all or nothing.

        RateLimitError (429) names the limit with the longest wait and carries that wait;
        InvalidRequestError (400) when ``tokens`` exceed the tenant's whole per-minute budget."""
        if tokens < 0:
            raise ValueError(f"tokens must be ≥ 0, got {tokens}")
        now = self._clock()
        state = self._state(tenant, now)
        lim = state.limits
        if lim.tokens_per_minute is not None and tokens > lim.tokens_per_minute:
            raise InvalidRequestError(
                f"this request may use {tokens} tokens (prompt + max_tokens), more than tenant {tenant.name!r}'s "
                f"limit of {lim.tokens_per_minute} tokens per minute; lower max_tokens", param="max_tokens")
        waits: list[tuple[float, str, int]] = []
        if lim.concurrent_requests is not None and state.num_in_flight >= lim.concurrent_requests:
            waits.append((self._concurrency_retry_after_s, "concurrent_requests", lim.concurrent_requests))
        if state.requests is not None and lim.requests_per_minute is not None:
            waits.append((state.requests.wait_s(1, now), "requests_per_minute", lim.requests_per_minute))
        if state.tokens is not None and lim.tokens_per_minute is not None:
            waits.append((state.tokens.wait_s(tokens, now), "tokens_per_minute", lim.tokens_per_minute))
        blocking = [w for w in waits if w[0] > 0]
        if blocking:
            wait_s, limit, value = max(blocking)
            raise RateLimitError(f"rate limit reached for tenant {tenant.name!r}: {limit} = {value}; "
                                 f"retry after {wait_s:.1f} s", retry_after_s=wait_s, limit=limit)
        if state.requests is not None:
            state.requests.take(1)
        if state.tokens is not None:
            state.tokens.take(tokens)
        state.num_in_flight += 1
        lease = Lease(next(self._ids), tenant.name, tokens)
        self._open[lease.lease_id] = lease
        return lease

    def release(self, lease: Lease, *, used_tokens: int | None = None) -> None:
        """The request ended (call in a ``finally``); idempotent. ``used_tokens`` (prompt +
        completion) settles the reservation: the unused part goes back, an overrun is charged."""
        if self._open.pop(lease.lease_id, None) is None:
            return
        state = self._states.get(lease.tenant)
        if state is None:
            return
        state.num_in_flight = max(0, state.num_in_flight - 1)
        if state.tokens is not None and used_tokens is not None:
            state.tokens.refill(self._clock())
            unused = lease.reserved_tokens - used_tokens
            if unused > 0:
                state.tokens.give_back(unused)
            else:
                state.tokens.take(-unused)

    def num_in_flight(self, tenant_name: str) -> int:
        state = self._states.get(tenant_name)
        return state.num_in_flight if state is not None else 0
