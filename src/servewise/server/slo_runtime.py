"""The server's SLO machinery at the edge: who is calling, which class, the tenant's limits,
and what every finished request did to attainment, usage and the rate limits. Predictive
admission belongs to the backend (``server/backend.py``): one engine, or a fleet.

Owned by the event loop (the slo/ components are not thread-safe).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from servewise.config import SchedulerConfig
from servewise.errors import AuthenticationError, OverloadedError
from servewise.slo import (
    AdmissionConfig,
    AdmissionMode,
    ApiKeyStore,
    Lease,
    MetricSample,
    Outcome,
    RateLimiter,
    RequestUsage,
    SLOClass,
    SLOConfig,
    SLOTracker,
    Tenant,
    UsageConfig,
    UsageMeter,
    default_slo_config,
    resolve_class,
)
from servewise.slo.tenants import DEFAULT_TENANT
from servewise.types import RequestTimings

ANONYMOUS = Tenant(DEFAULT_TENANT)  # every caller when no API keys are configured


@dataclass(frozen=True)
class SLOSettings:
    """SLO classes, admission, keys, cost, health and drain: the server's policy knobs."""

    slo_config: SLOConfig = field(default_factory=default_slo_config)
    admission_mode: AdmissionMode = AdmissionMode.ENFORCE  # OBSERVE = admission off (predict, never shed)
    max_queued_prefill_tokens: int | None = None  # shed beyond this many queued prompt tokens
    max_num_waiting_requests: int | None = None  # shed beyond this many waiting requests
    api_keys: ApiKeyStore | None = None  # None = no authentication, one anonymous tenant
    public_routes: tuple[str, ...] = ("/health", "/ready")  # reachable without a key when keys are set
    price_per_device_hour: float | None = None  # $ per hour of this device, for cost per tenant
    watchdog_timeout_s: float = 30.0  # /ready turns 503 when work waits and no step ends this long
    drain_timeout_s: float = 30.0  # on SIGTERM, in-flight requests get this long to finish

    def __post_init__(self) -> None:
        if not self.watchdog_timeout_s > 0 or not self.drain_timeout_s >= 0:
            raise ValueError("watchdog_timeout_s must be > 0 and drain_timeout_s ≥ 0")
        if self.api_keys is not None:
            self.api_keys.check_classes(self.slo_config.class_names)

    def admission_config(self, scheduler: SchedulerConfig) -> AdmissionConfig:
        """Predictive admission for an engine with this scheduler config."""
        return AdmissionConfig.for_scheduler(scheduler, mode=self.admission_mode,
                                             max_queued_prefill_tokens=self.max_queued_prefill_tokens,
                                             max_num_waiting_requests=self.max_num_waiting_requests)


@dataclass
class Ticket:
    """One admitted request's SLO bookkeeping, from admission to its end."""

    key: int
    tenant: Tenant
    slo_class: SLOClass
    lease: Lease
    predicted_ttft_s: float
    first_token_seen: bool = False


class SLORuntime:
    def __init__(self, settings: SLOSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.slo_config = settings.slo_config
        self.tracker = SLOTracker(settings.slo_config, clock=clock)
        self.limiter = RateLimiter(clock)
        self.usage = UsageMeter(UsageConfig(settings.price_per_device_hour))
        self._keys = itertools.count()

    @property
    def auth_required(self) -> bool:
        return self.settings.api_keys is not None

    def authenticate(self, authorization: str | None, api_key_header: str | None = None) -> Tenant:
        """`Authorization: Bearer <key>` (or `x-api-key`) -> the tenant; 401 if keys are set and it is wrong."""
        keys = self.settings.api_keys
        if keys is None:
            return ANONYMOUS
        presented = api_key_header
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise AuthenticationError("the Authorization header must be 'Bearer <API key>'")
            presented = value.strip()
        return keys.authenticate(presented)

    def classify(self, tenant: Tenant, requested: str | None) -> SLOClass:
        return resolve_class(self.slo_config, tenant.slo_class, requested)

    def admit(self, tenant: Tenant, slo_class: SLOClass, reserved_tokens: int,
              predict: Callable[[int], float]) -> Ticket:
        """The tenant's rate limits, then ``predict(key)`` (the backend's predictive admission:
        the predicted TTFT, or OverloadedError); raises RateLimitError / OverloadedError (429)."""
        lease = self.limiter.acquire(tenant, reserved_tokens)
        key = next(self._keys)
        try:
            predicted_ttft_s = predict(key)
        except OverloadedError:
            self.limiter.release(lease, used_tokens=0)
            self.tracker.record(slo_class.name, Outcome.SHED)
            raise
        except BaseException:
            self.limiter.release(lease, used_tokens=0)
            raise
        return Ticket(key, tenant, slo_class, lease, predicted_ttft_s)

    def abandon(self, ticket: Ticket, outcome: Outcome) -> None:
        """The request was refused after admission here (a fleet replica shed it) or failed before
        it started: nothing was used; the outcome counts for attainment."""
        self.limiter.release(ticket.lease, used_tokens=0)
        self.tracker.record(ticket.slo_class.name, outcome)

    def finish(self, ticket: Ticket, outcome: Outcome, timings: list[RequestTimings], arrival_s: float,
               usage: RequestUsage) -> None:
        """The request ended (call exactly once, in a finally): attainment, usage, limits."""
        self.limiter.release(ticket.lease, used_tokens=usage.prompt_tokens + usage.completion_tokens)
        self.usage.record(ticket.tenant.name, usage)
        ttft, tpot, e2e = request_latencies(timings, arrival_s, usage.completion_tokens)
        self.tracker.record(ticket.slo_class.name, outcome, ttft_s=ttft, tpot_s=tpot, e2e_s=e2e)

    def metric_samples(self) -> Iterator[MetricSample]:
        yield from self.tracker.metric_samples()
        yield from self.usage.metric_samples()


def request_latencies(timings: list[RequestTimings], arrival_s: float, num_tokens: int
                      ) -> tuple[float | None, float | None, float | None]:
    firsts = [t.first_token_s for t in timings if t.first_token_s is not None]
    lasts = [t.last_token_s for t in timings if t.last_token_s is not None]
    if not firsts:
        return None, None, None
    ttft = min(firsts) - arrival_s
    e2e = max(lasts) - arrival_s if lasts else None
    tpot = (max(lasts) - min(firsts)) / (num_tokens - 1) if lasts and num_tokens > 1 else None
    return ttft, tpot, e2e


# Output tokens reserved for a request without max_tokens; the real count is settled at the end.
DEFAULT_RESERVED_OUTPUT_TOKENS = 256


def reserved_tokens(prompt_lengths: list[int], n: int, max_tokens: int | None, max_model_len: int) -> int:
    """Tokens a request may use (prompt + n × output), reserved against tokens_per_minute before it runs."""
    total = 0
    for length in prompt_lengths:
        room = max(1, max_model_len - length)
        out = min(max_tokens, room) if max_tokens is not None else min(DEFAULT_RESERVED_OUTPUT_TOKENS, room)
        total += length + n * out
    return total
