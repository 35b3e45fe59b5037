"""Ray's prefix-tree router (``ray.serve.llm``'s PrefixCacheAffinityRouter), for comparison only
(``--router prefix-affinity``). Imported from Ray's internal module because the public one
pulls in ray.llm's serving dependencies (pyarrow, ...) that ServeWise does not need.
"""

from __future__ import annotations

from typing import Any

from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
    PrefixCacheAffinityRouter,
)
from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RunningReplica

from servewise.fleet.messages import ReplicaCall
from servewise.fleet.ray_router import _back_off_when_refused, _FeedsFleetRouter, _payload
from servewise.fleet.routing import RouteReason


class PrefixAffinityRouter(_FeedsFleetRouter, PrefixCacheAffinityRouter):
    """Ray's prefix-tree router (``ray.serve.llm``): a remote tree actor call per request."""

    def initialize_state(self, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize_state(**kwargs)
        self._attach(RouteReason.PREFIX)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self._publish(replicas)

    async def choose_replicas(  # type: ignore[override]  # Ray annotates a flat list, returns ranks
            self, candidate_replicas: list[RunningReplica],
            pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        req = _payload(pending_request)
        if isinstance(req, ReplicaCall) and candidate_replicas:
            _back_off_when_refused(pending_request)
            return self._targeted(candidate_replicas, req)
        ranks: list[list[RunningReplica]] = await super().choose_replicas(  # type: ignore[assignment]
            candidate_replicas, pending_request)
        return ranks

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        super().on_request_routed(pending_request, replica_id, result)
        self._routed(pending_request, replica_id)


# Import paths (Ray imports the class where the handle lives): the prefix-tree router pulls in
# ray.llm, so it is only imported when chosen.
