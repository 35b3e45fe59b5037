"""What an engine replica publishes about itself, and what a routed request carries.

``ReplicaStats`` travels as a plain dict (Ray Serve's ``record_routing_stats`` ships it to
every router through the controller, at most every ``routing_stats_period_s``); ``to_dict`` /
``from_dict`` are the wire format, versioned so a router never misreads a newer replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from servewise.slo import StepCost

WIRE_VERSION = 1


@dataclass(frozen=True)
class ReplicaStats:
    """One replica's state as it published it."""

    replica_id: str  # Ray Serve's replica id (unique_id), the ``replica`` metrics label
    cost: StepCost  # its step-cost model, fitted online to its own steps
    max_num_batched_tokens: int  # its per-step token budget
    max_num_seqs: int  # its running-batch cap
    priority_order: bool  # its queue serves more urgent classes first (else FCFS)
    # Prompt tokens admitted and not yet past their first token, by class priority (uncached
    # tokens only: the replica's own admission counted what its prefix cache lacked).
    queued_prefill_tokens: Mapping[int, int]
    # Requests it received that are still waiting for their first token: key -> (class priority,
    # queued tokens). A router corrects the stale figure both ways: it adds the requests it sent
    # that are not here yet, and subtracts those here that it has since seen start or finish.
    pending: Mapping[str, tuple[int, int]]
    num_running: int  # requests in its running batch
    num_waiting: int  # requests in its waiting queue
    kv_cache_usage: float  # fraction of its KV blocks held by requests
    num_kv_blocks: int  # its KV pool size, which bounds what its prefix cache can hold
    block_size: int  # tokens per KV block (prefix hashes cover full blocks)
    recent_step_s: float | None  # mean step over the admission's TPOT window; None when idle
    # What its steps aim at (tightest TPOT in flight × margin) when it sizes prefill by the SLO; None = B - D.
    step_target_s: float | None = None
    accepting: bool = True  # False while it drains or its engine is down
    published_s: float = 0.0  # its wall clock when published (for staleness reports only)
    slo: Mapping[str, Any] = field(default_factory=dict)  # its /v1/slo body (small), for the fleet report

    def queued_tokens_ahead(self, priority: int) -> int:
        """Queued prompt tokens a new request of ``priority`` waits behind."""
        if not self.priority_order:
            return sum(self.queued_prefill_tokens.values())
        return sum(n for p, n in self.queued_prefill_tokens.items() if p <= priority)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": WIRE_VERSION, "replica_id": self.replica_id,
            "cost": [self.cost.step_overhead_s, self.cost.prefill_s_per_token, self.cost.decode_s_per_token],
            "max_num_batched_tokens": self.max_num_batched_tokens, "max_num_seqs": self.max_num_seqs,
            "priority_order": self.priority_order,
            "queued_prefill_tokens": {str(p): n for p, n in self.queued_prefill_tokens.items()},
            "pending": {k: list(v) for k, v in self.pending.items()}, "num_running": self.num_running,
            "num_waiting": self.num_waiting, "kv_cache_usage": self.kv_cache_usage,
            "num_kv_blocks": self.num_kv_blocks, "block_size": self.block_size,
            "recent_step_s": self.recent_step_s, "step_target_s": self.step_target_s, "accepting": self.accepting,
            "published_s": self.published_s,
            "slo": dict(self.slo),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplicaStats | None:
        """None for anything this version cannot read (no stats yet, or a newer wire format)."""
        if not data or data.get("v") != WIRE_VERSION:
            return None
        a, b, c = data["cost"]
        return cls(replica_id=str(data["replica_id"]), cost=StepCost(float(a), float(b), float(c)),
                   max_num_batched_tokens=int(data["max_num_batched_tokens"]),
                   max_num_seqs=int(data["max_num_seqs"]), priority_order=bool(data["priority_order"]),
                   queued_prefill_tokens={int(p): int(n) for p, n in data["queued_prefill_tokens"].items()},
                   pending={str(k): (int(p), int(n)) for k, (p, n) in data["pending"].items()},
                   num_running=int(data["num_running"]),
                   num_waiting=int(data["num_waiting"]), kv_cache_usage=float(data["kv_cache_usage"]),
                   num_kv_blocks=int(data["num_kv_blocks"]), block_size=int(data["block_size"]),
                   recent_step_s=data["recent_step_s"], step_target_s=data.get("step_target_s"),
                   accepting=bool(data["accepting"]),
                   published_s=float(data["published_s"]), slo=data.get("slo") or {})


@dataclass(frozen=True)
class RouteInfo:
    """What the router needs to know about one engine request (it rides in the replica payload)."""

    key: str  # unique per engine request: the router's and the replica's bookkeeping key
    num_prompt_tokens: int
    # Chained hashes of the prompt's full blocks (``engine.kv_cache_manager.chain_hashes``), at
    # most ``RouterConfig.max_prefix_blocks`` of them: the router's prefix-cache estimate.
    block_hashes: tuple[bytes, ...]
    priority: int  # the SLO class's priority (lower = more urgent)
    exclude: frozenset[str] = frozenset()  # replicas that shed or failed this request already
