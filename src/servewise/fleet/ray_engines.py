"""The ingress's way to one version's engine replicas through Ray Serve: send, report, look up.

Each model version of a fleet is its own Serve application (``<app>-<version>``, one ``Engine``
deployment), so a rollout can add a candidate and delete a baseline without touching the
ingress. This module turns Ray's handles and errors into the fleet's own terms
(``ingress.VersionTarget``, ``ReplicaFailure``); nothing else in the ingress sees Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import ray
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayError, RayTaskError
from ray.serve import context as serve_context
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from servewise.errors import EngineError, ServeWiseError, ServiceUnavailableError
from servewise.fleet.fleet_call import ReplicaFailure, VersionTarget
from servewise.fleet.messages import ReplicaCall, ReplicaMessage, ReplicaRequest
from servewise.fleet.router_core import FleetRouter, RouterConfig, fleet_router
from servewise.server.backend import ReplicaReport

ENGINE = "Engine"
REPORT_TIMEOUT_S = 5.0


def engine_app_name(app_name: str, version: str) -> str:
    return f"{app_name}-{version}"


def state_store(app_name: str) -> ActorStateBackend:
    return ActorStateBackend(app_name)


@contextlib.contextmanager
def own_request_context() -> Iterator[None]:
    """Give the next handle call its own Ray request id. Calls made while serving one HTTP request
    inherit that request's id, and Ray's router matches routed replicas to pending requests by it:
    two concurrent calls (the prompts of one completions request, a report fan-out) would collide."""
    current = serve_context._get_serve_request_context()
    token = serve_context._serve_request_context.set(
        dataclasses.replace(current, _internal_request_id=uuid.uuid4().hex))  # type: ignore[arg-type]
    try:
        yield
    finally:
        serve_context._serve_request_context.reset(token)


class EngineClient:
    """One version's Engine deployment, seen from the ingress."""

    def __init__(self, app_name: str, version: str, router_config: RouterConfig) -> None:
        self.version = version
        self.app = engine_app_name(app_name, version)
        self.handle: DeploymentHandle = serve.get_deployment_handle(ENGINE, app_name=self.app)
        # the state Ray's request router for this deployment shares in this process (ray_router.py)
        self.router: FleetRouter = fleet_router(f"{self.app}#{ENGINE}", router_config)

    def target(self) -> VersionTarget:
        return VersionTarget(self.version, self.router, self.send, self.reports)

    def model_info(self, timeout_s: float = 1800) -> Any:
        """Blocking (call it off the event loop): waits until a replica has loaded its model."""
        return self.handle.model_info.remote().result(timeout_s=timeout_s)

    async def send(self, req: ReplicaRequest) -> AsyncGenerator[ReplicaMessage, None]:
        with own_request_context():
            stream: DeploymentResponseGenerator[Any] = self.handle.options(stream=True).generate.remote(req)  # type: ignore[assignment]
        finished = False
        try:
            async for msg in stream:
                yield msg
            finished = True
        except RayTaskError as exc:
            raise self._replica_error(exc, req) from None
        except (RayActorError, ActorUnavailableError, RayError) as exc:
            raise ReplicaFailure(f"{type(exc).__name__}: {_first_line(exc)}",
                                 self.router.replica_of(req.route.key)) from None
        finally:
            if not finished:
                stream.cancel()  # the client left or a failure: the replica aborts and frees its blocks

    async def reports(self) -> list[ReplicaReport]:
        calls = []
        for replica_id in self.router.replica_ids:
            with own_request_context():
                calls.append(self.handle.report.remote(ReplicaCall(replica_id)))
        done = await asyncio.gather(*(asyncio.wait_for(_awaited(c), REPORT_TIMEOUT_S) for c in calls),
                                    return_exceptions=True)
        reports = {r.replica: r for r in done if isinstance(r, ReplicaReport)}
        return [reports[k] for k in sorted(reports)]

    def _replica_error(self, exc: RayTaskError, req: ReplicaRequest) -> Exception:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ServiceUnavailableError):  # its engine is down: try another replica
            return ReplicaFailure(cause.message, self.router.replica_of(req.route.key))
        if isinstance(cause, ServeWiseError):
            return cause
        name = type(cause).__name__ if cause else "error"
        return EngineError(f"engine replica failed: {name}: {_first_line(exc)}")


async def _awaited(response: Any) -> Any:
    return await response


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


@ray.remote(num_cpus=0)
class _StateActor:
    """Holds the fleet's rollout state across ingress restarts (a plain dict)."""

    def __init__(self) -> None:
        self._value: dict[str, Any] | None = None

    def get(self) -> dict[str, Any] | None:
        return self._value

    def put(self, value: dict[str, Any]) -> None:
        self._value = value


class ActorStateBackend:
    """The rollout state store on a detached Ray actor: it outlives the ingress, not the cluster."""

    def __init__(self, app_name: str) -> None:
        self.name = f"{app_name}-rollout-state"
        self._actor = _StateActor.options(name=self.name, namespace="serve", lifetime="detached",  # type: ignore[attr-defined]
                                          get_if_exists=True).remote()

    def get(self) -> dict[str, Any] | None:
        value: dict[str, Any] | None = ray.get(self._actor.get.remote())
        return value

    async def put(self, value: dict[str, Any]) -> None:
        await self._actor.put.remote(value)


def forget_state(app_name: str) -> None:
    """A fleet started afresh: no rollout state from an earlier one on the same cluster."""
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(f"{app_name}-rollout-state", namespace="serve"))
