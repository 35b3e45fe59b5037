"""Ray Serve request routers that use (or at least feed) the fleet's router state.

Ray's ``RequestRouter`` is an alpha API; everything that touches it lives in this module (and
``ray[serve]`` is pinned to 2.60.x). Ray builds one router per deployment handle, in the
process that holds the handle (the ingress), on its own event loop thread. It hands us the
replicas with the dict each one's ``record_routing_stats`` returned, and asks us to rank them.

- ``SLORouter``: ranks by the fleet router's predicted TTFT (``routing.py``): prefix-affine,
  load-aware, staleness-corrected, no remote call per request.
- ``PowerOfTwoRouter`` and ``PrefixAffinityRouter``: Ray's own routers (power of two choices;
  ``ray.serve.llm``'s prefix-tree router), kept for comparison (``--router``). They feed the same
  state, so the ingress's readiness, fleet admission and metrics work with every router.

Ray pickles this module *by value* to ship the router class: it holds no state of its own
(``router_core.fleet_router`` keeps the per-process state, shared with the ingress).

Every router here also answers ``ReplicaCall`` payloads (reports, model info) aimed at one
replica, and never returns an empty ranking: Ray would back off and retry forever.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

from servewise.fleet.messages import ReplicaCall, ReplicaRequest
from servewise.fleet.router_core import FleetRouter, fleet_router
from servewise.fleet.routing import RouteReason
from servewise.fleet.stats import ReplicaStats

logger = logging.getLogger("servewise.fleet")


def _payload(pending: PendingRequest | None) -> Any:
    return pending.args[0] if pending is not None and pending.args else None


def _back_off_when_refused(pending: PendingRequest | None) -> None:
    """Without it, Ray calls choose_replicas again at once when every replica it returned refuses
    (they are full), spinning the router loop every handle in this process shares."""
    if pending is not None:
        pending.routing_context.should_backoff = True


class _FeedsFleetRouter:
    """Keeps the shared ``FleetRouter`` up to date from what Ray tells any router."""

    _deployment_id: Any
    fleet: FleetRouter
    _routes: dict[str, tuple[ReplicaRequest, RouteReason]]

    def _attach(self, reason: RouteReason) -> None:
        self.fleet = fleet_router(f"{self._deployment_id.app_name}#{self._deployment_id.name}")
        self._routes = {}
        self._default_reason = reason

    def _publish(self, replicas: Sequence[RunningReplica]) -> None:
        stats = [s for s in (ReplicaStats.from_dict(r.routing_stats) for r in replicas) if s is not None]
        self.fleet.update_stats(stats)

    def _targeted(self, replicas: Sequence[RunningReplica], call: ReplicaCall) -> list[list[RunningReplica]]:
        target = [r for r in replicas if r.replica_id.unique_id == call.replica_id]
        return [target] if target else [list(replicas)]  # gone: any replica answers, the caller checks

    def _remember(self, pending: PendingRequest | None, reason: RouteReason) -> None:
        req = _payload(pending)
        if isinstance(req, ReplicaRequest) and pending is not None:
            self._routes[pending.metadata.internal_request_id] = (req, reason)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)  # type: ignore[misc]  # the Ray router after this mixin
        self._publish(replicas)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        super().on_request_routed(pending_request, replica_id, result)  # type: ignore[misc]
        self._routed(pending_request, replica_id)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        """Ray's own routers: theirs, except for calls aimed at one replica."""
        req = _payload(pending_request)
        if isinstance(req, ReplicaCall) and candidate_replicas:
            _back_off_when_refused(pending_request)
            return self._targeted(candidate_replicas, req)
        ranks: list[list[RunningReplica]] = await super().choose_replicas(  # type: ignore[misc]
            candidate_replicas, pending_request)
        return ranks

    def _routed(self, pending: PendingRequest, replica_id: ReplicaID) -> None:
        entry = self._routes.pop(pending.metadata.internal_request_id, None)
        req = _payload(pending)
        if isinstance(req, ReplicaRequest):
            reason = entry[1] if entry is not None else self._default_reason
            self.fleet.on_routed(req.route, replica_id.unique_id, reason)


class SLORouter(_FeedsFleetRouter, RequestRouter):
    def initialize_state(self, **kwargs: Any) -> None:
        self._attach(RouteReason.LOAD)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        _back_off_when_refused(pending_request)
        req = _payload(pending_request)
        if isinstance(req, ReplicaCall):
            return self._targeted(candidate_replicas, req)
        if not isinstance(req, ReplicaRequest):
            return [candidate_replicas]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        try:
            order, reason = self.fleet.choose(req.route, list(by_id))
        except Exception:  # an exception here would hang the request silently: rank at random instead
            logger.exception("routing failed; sending %s to any replica", req.request_id)
            return [candidate_replicas]
        self._remember(pending_request, reason)
        return [[by_id[rid]] for rid in order]

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.fleet.remove_replica(replica_id.unique_id)


class PowerOfTwoRouter(_FeedsFleetRouter, PowerOfTwoChoicesRequestRouter):
    """Ray's default router (power of two choices on queue length), for comparison."""

    def initialize_state(self, **kwargs: Any) -> None:
        super().initialize_state(**kwargs)
        self._attach(RouteReason.LOAD)


# Import paths (Ray imports the class in the process that holds the handle); the prefix-tree
# router pulls in ray.llm, so it is imported only when chosen.
ROUTERS = {"servewise": "servewise.fleet.ray_router:SLORouter",
           "pow2": "servewise.fleet.ray_router:PowerOfTwoRouter",
           "prefix-affinity": "servewise.fleet.ray_prefix_router:PrefixAffinityRouter"}
