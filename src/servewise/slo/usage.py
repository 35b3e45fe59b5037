"""Usage and cost per tenant: tokens, device time and dollars.

The engine splits each step's duration among the requests in it by their share of
the step's tokens, and the server hands every finished request's share here as
``prefill_compute_s`` and ``decode_compute_s``. Cost = device seconds × price per
device-hour / 3600. Idle device time belongs to no request and is billed to no tenant,
so the sum over tenants is the cost of the *busy* time; ``dollars_per_million_tokens``
is a tenant's cost over its prompt + completion tokens (cached prompt tokens included:
they were served, only cheaper).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from servewise.slo.samples import PREFIX, MetricSample


@dataclass(frozen=True)
class UsageConfig:
    price_per_device_hour_dollars: float | None = None  # e.g. 2.5 for a $2.50/h GPU; None = no cost

    def __post_init__(self) -> None:
        p = self.price_per_device_hour_dollars
        if p is not None and not (math.isfinite(p) and p >= 0):
            raise ValueError(f"price_per_device_hour_dollars must be ≥ 0, got {p!r}")


@dataclass(frozen=True)
class RequestUsage:
    """One finished request's consumption, as the server reports it."""

    prompt_tokens: int  # all prompt tokens, cached ones included
    cached_prompt_tokens: int  # of which served from the prefix cache
    completion_tokens: int  # generated tokens (all n choices)
    prefill_compute_s: float  # its share of prefill step time
    decode_compute_s: float  # its share of decode step time

    def __post_init__(self) -> None:
        if min(self.prompt_tokens, self.cached_prompt_tokens, self.completion_tokens) < 0:
            raise ValueError("token counts must be ≥ 0")
        if self.cached_prompt_tokens > self.prompt_tokens:
            raise ValueError("cached_prompt_tokens cannot exceed prompt_tokens")
        if not (self.prefill_compute_s >= 0 and self.decode_compute_s >= 0):
            raise ValueError("compute seconds must be ≥ 0")


@dataclass
class TenantUsage:
    """Running totals of one tenant since the server started."""

    num_requests: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_device_s: float = 0.0
    decode_device_s: float = 0.0

    @property
    def device_s(self) -> float:
        return self.prefill_device_s + self.decode_device_s

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageMeter:
    """Per-tenant counters; one owner (the server's event loop). Memory grows with tenants only."""

    def __init__(self, config: UsageConfig | None = None) -> None:
        self.config = config or UsageConfig()
        self._tenants: dict[str, TenantUsage] = {}

    def record(self, tenant: str, usage: RequestUsage) -> None:
        t = self._tenants.setdefault(tenant, TenantUsage())
        t.num_requests += 1
        t.prompt_tokens += usage.prompt_tokens
        t.cached_prompt_tokens += usage.cached_prompt_tokens
        t.completion_tokens += usage.completion_tokens
        t.prefill_device_s += usage.prefill_compute_s
        t.decode_device_s += usage.decode_compute_s

    def usage(self, tenant: str) -> TenantUsage:
        return self._tenants.get(tenant, TenantUsage())

    def cost_dollars(self, usage: TenantUsage) -> float | None:
        price = self.config.price_per_device_hour_dollars
        return None if price is None else usage.device_s * price / 3600.0

    def dollars_per_million_tokens(self, usage: TenantUsage) -> float | None:
        cost = self.cost_dollars(usage)
        if cost is None or usage.total_tokens == 0:
            return None
        return cost / usage.total_tokens * 1e6

    def _tenant_dict(self, usage: TenantUsage) -> dict[str, Any]:
        return {**asdict(usage), "device_s": usage.device_s, "total_tokens": usage.total_tokens,
                "cost_dollars": self.cost_dollars(usage),
                "dollars_per_million_tokens": self.dollars_per_million_tokens(usage)}

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready totals per tenant and overall (``GET /v1/usage``)."""
        total = TenantUsage()
        for t in self._tenants.values():
            for name, value in asdict(t).items():
                setattr(total, name, getattr(total, name) + value)
        return {"price_per_device_hour_dollars": self.config.price_per_device_hour_dollars,
                "tenants": {name: self._tenant_dict(t) for name, t in sorted(self._tenants.items())},
                "total": self._tenant_dict(total)}

    def metric_samples(self) -> Iterator[MetricSample]:
        """Counters with a ``tenant`` label (device seconds also by ``phase``); cost only with a price."""
        for name, t in sorted(self._tenants.items()):
            labels = {"tenant": name}
            yield MetricSample(PREFIX + "tenant_requests_total", labels, float(t.num_requests))
            yield MetricSample(PREFIX + "tenant_prompt_tokens_total", labels, float(t.prompt_tokens))
            yield MetricSample(PREFIX + "tenant_cached_prompt_tokens_total", labels, float(t.cached_prompt_tokens))
            yield MetricSample(PREFIX + "tenant_completion_tokens_total", labels, float(t.completion_tokens))
            yield MetricSample(PREFIX + "tenant_device_seconds_total", {**labels, "phase": "prefill"},
                               t.prefill_device_s)
            yield MetricSample(PREFIX + "tenant_device_seconds_total", {**labels, "phase": "decode"},
                               t.decode_device_s)
            cost = self.cost_dollars(t)
            if cost is not None:
                yield MetricSample(PREFIX + "tenant_cost_dollars_total", labels, cost)
