"""What the ingress sends an engine replica, and what the replica streams back (pickled by Ray).

A replica answers one ``ReplicaRequest`` with either a single ``Shed`` (its own admission
refused it: the ingress retries once elsewhere), or ``Accepted`` followed by ``OutputBatch``
messages until the request finishes. Outputs are batched for ``flush_interval_s`` because
each streamed message through Ray costs far more than one engine output (ray #52745).
"""

from __future__ import annotations

from dataclasses import dataclass

from servewise.fleet.stats import RouteInfo
from servewise.slo import SLOClass
from servewise.types import RequestOutput, SamplingParams


@dataclass(frozen=True)
class ReplicaRequest:
    request_id: str  # the engine request id (unique)
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams
    slo_class: SLOClass  # the replica's own admission and queue order use it
    route: RouteInfo  # the router reads it to pick the replica; ``route.key`` names it in stats
    age_s: float  # seconds since the ingress received the HTTP request, when sent (clocks differ by node)

    @property
    def prompt(self) -> str:
        """The prompt as text of token ids: what Ray's prefix-tree router (``--router prefix-affinity``)
        reads from a request; a shared token prefix is a shared character prefix."""
        return " ".join(map(str, self.prompt_token_ids))


@dataclass(frozen=True)
class ReplicaCall:
    """A control call aimed at one replica (its report); the routers send it there."""

    replica_id: str


@dataclass(frozen=True)
class Accepted:
    replica_id: str
    predicted_ttft_s: float  # the replica's own admission's prediction


@dataclass(frozen=True)
class Shed:
    replica_id: str
    message: str
    retry_after_s: float
    reason: str  # ShedReason value


@dataclass(frozen=True)
class OutputBatch:
    outputs: list[RequestOutput]  # in engine order; timings in the replica's monotonic clock
    sent_s: float  # the replica's monotonic clock when sent: the ingress maps replica times onto its own


ReplicaMessage = Accepted | Shed | OutputBatch
