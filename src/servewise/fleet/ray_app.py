"""The fleet as a Ray Serve application: an ingress deployment and an engine deployment.

```
client -HTTP-> Ray Serve proxy -> Ingress (the FastAPI app of `servewise serve`: auth, validation,
                                   tokenization, SLO class, tenants, usage; FleetBackend)
                                      | handle.options(stream=True).generate, routed by our router
                                      v
                                   Engine x N (ReplicaServer: AsyncEngine, admission, prefix cache)
```

Everything here is glue: the decisions live in ``routing``/``router_core``/``autoscaling``/
``replica``/``ingress``. ``build_app`` is what `servewise serve --replicas` runs;
``build`` is the import path for a KubeRay RayService (``servewise.fleet.ray_app:build``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayError, RayTaskError
from ray.serve import context as serve_context
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig
from ray.serve.deployment import Deployment
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from servewise.errors import EngineError, ServeWiseError, ServiceUnavailableError
from servewise.fleet.autoscaling import ReplicaPressure, ScalingConfig, ScalingState, decide
from servewise.fleet.config import FleetConfig
from servewise.fleet.ingress import FleetBackend, ReplicaFailure
from servewise.fleet.messages import ReplicaCall, ReplicaMessage, ReplicaRequest
from servewise.fleet.ray_router import ROUTERS
from servewise.fleet.replica import ReplicaServer, ReplicaSettings
from servewise.fleet.router_core import RouterConfig, fleet_router
from servewise.server.backend import Backend, ReplicaReport

logger = logging.getLogger("servewise.fleet")
ENGINE = "Engine"
INGRESS = "Ingress"
REPORT_TIMEOUT_S = 5.0


@contextlib.contextmanager
def _own_request_context() -> Iterator[None]:
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


class EngineDeployment:
    """One engine replica: loads the model, serves ``ReplicaRequest`` streams, publishes stats."""

    async def __init__(self, config: FleetConfig) -> None:  # type: ignore[misc]  # Ray awaits it
        from servewise.engine.async_engine import AsyncEngine
        from servewise.engine.llm_engine import LLMEngine

        replica_id = serve.get_replica_context().replica_id.unique_id
        engine = await asyncio.to_thread(lambda: AsyncEngine(LLMEngine(config.engine)))
        self.server = ReplicaServer(engine, config.engine, ReplicaSettings(config.slo, config.flush_interval_s),
                                    replica_id)
        self.server.start(asyncio.get_running_loop())
        logger.info("engine replica %s ready: %s", replica_id, engine.model_info.name)

    async def generate(self, req: ReplicaRequest) -> AsyncIterator[ReplicaMessage]:
        async for msg in self.server.generate(req):
            yield msg

    async def model_info(self) -> Any:
        return self.server.model_info

    async def report(self, call: ReplicaCall) -> ReplicaReport:
        return self.server.report()

    async def record_routing_stats(self) -> dict[str, Any]:
        return self.server.routing_stats()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        return self.server.autoscaling_stats()

    async def check_health(self) -> None:
        self.server.check_health()

    async def __del__(self) -> None:
        # Ray stopped routing here and waited for in-flight requests (graceful_shutdown_timeout_s).
        server = getattr(self, "server", None)  # None: stopped while still loading its model
        if server is not None:
            server.drain()
            server.abort_all()
            server.engine.shutdown()


class IngressDeployment:
    """The OpenAI API of the fleet: the same app as `servewise serve`, on a ``FleetBackend``."""

    async def __init__(self, engine: DeploymentHandle, config: FleetConfig) -> None:  # type: ignore[misc]
        self.engine_handle = engine
        self.config = config

    def __serve_build_asgi_app__(self) -> Any:
        from servewise.server.app import create_app

        return create_app(self.config.server, self.config.engine, self._backend, self.config.slo)

    def _backend(self) -> Backend:
        """Runs in the app's loading thread: the tokenizer here, the model's facts from a replica."""
        from servewise.loading import load_tokenizer

        router = fleet_router(ENGINE, RouterConfig(admission_mode=self.config.slo.admission_mode))
        tokenizer = load_tokenizer(self.config.engine.model)
        info = self.engine_handle.model_info.remote().result(timeout_s=1800)  # waits for a replica to load
        return FleetBackend(tokenizer, info, router, self._send, self._reports,
                            structured=self.config.engine.structured)

    async def _send(self, req: ReplicaRequest) -> AsyncGenerator[ReplicaMessage, None]:
        with _own_request_context():
            stream: DeploymentResponseGenerator[Any] = self.engine_handle.options(stream=True).generate.remote(req)  # type: ignore[assignment]
        finished = False
        try:
            async for msg in stream:
                yield msg
            finished = True
        except RayTaskError as exc:
            raise _replica_error(exc, req) from None
        except (RayActorError, ActorUnavailableError, RayError) as exc:
            raise ReplicaFailure(f"{type(exc).__name__}: {_first_line(exc)}",
                                 fleet_router(ENGINE).replica_of(req.route.key)) from None
        finally:
            if not finished:
                stream.cancel()  # the client left or a failure: the replica aborts and frees its blocks

    async def _reports(self) -> list[ReplicaReport]:
        calls = []
        for replica_id in fleet_router(ENGINE).replica_ids:
            with _own_request_context():
                calls.append(self.engine_handle.report.remote(ReplicaCall(replica_id)))
        done = await asyncio.gather(*(asyncio.wait_for(_awaited(c), REPORT_TIMEOUT_S) for c in calls),
                                    return_exceptions=True)
        reports = {r.replica: r for r in done if isinstance(r, ReplicaReport)}
        return [reports[k] for k in sorted(reports)]

    async def drain(self, timeout_s: float) -> None:
        """503 for new requests, then wait (up to timeout_s) for those in flight to finish."""
        from servewise.server.lifecycle import drain

        app: Any = self.app  # type: ignore[attr-defined]  # Ray's ASGI wrapper holds the built app
        await drain(app.state.servewise, timeout_s)


async def _awaited(response: Any) -> Any:
    return await response


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _replica_error(exc: RayTaskError, req: ReplicaRequest) -> Exception:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ServiceUnavailableError):  # its engine is down: try another replica
        return ReplicaFailure(cause.message, fleet_router(ENGINE).replica_of(req.route.key))
    if isinstance(cause, ServeWiseError):
        return cause
    return EngineError(f"engine replica failed: {type(cause).__name__ if cause else 'error'}: {_first_line(exc)}")


class SLOAutoscalingPolicy:
    """Ray Serve's custom autoscaling policy hook around ``autoscaling.decide``."""

    def __init__(self, **scaling: Any) -> None:
        self.config = ScalingConfig(**scaling)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        metrics: dict[str, dict[Any, float]] = ctx.aggregated_metrics or {}
        replicas = {rid for values in metrics.values() for rid in values}
        pressures = [ReplicaPressure.from_metrics({name: values[rid] for name, values in metrics.items()
                                                   if rid in values}, self.config) for rid in replicas]
        state = ScalingState.from_dict(ctx.policy_state or {})
        now = ctx.current_time if ctx.current_time is not None else 0.0
        decision = decide(self.config, ctx.target_num_replicas, ctx.current_num_replicas, pressures, state, now)
        if decision.num_replicas != ctx.target_num_replicas:
            logger.info("autoscaling: %s", decision.reason)
        return decision.num_replicas, {**(ctx.policy_state or {}), **dataclasses.asdict(decision.state)}


def _engine_options(config: FleetConfig) -> dict[str, Any]:
    router: dict[str, Any] = {"request_router_class": ROUTERS[config.router],
                              "request_routing_stats_period_s": config.routing_stats_period_s,
                              "request_routing_stats_timeout_s": max(2.0, 4 * config.routing_stats_period_s)}
    actor: dict[str, Any] = {"num_cpus": config.num_cpus_per_replica}
    if config.num_gpus_per_replica:
        actor["num_gpus"] = config.num_gpus_per_replica
    options: dict[str, Any] = {
        "name": ENGINE, "ray_actor_options": actor, "max_constructor_retry_count": 3,
        # Our admission decides who waits; Ray must not queue or refuse on a count of requests.
        "max_ongoing_requests": 4 * config.engine.scheduler.max_num_seqs + 256,
        "graceful_shutdown_timeout_s": config.slo.drain_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.5,
        "health_check_period_s": 2.0,
        "health_check_timeout_s": max(10.0, config.slo.watchdog_timeout_s),
        "request_router_config": RequestRouterConfig(**router),
    }
    if config.scaling is None:
        options["num_replicas"] = config.num_replicas
    else:
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=config.scaling.min_replicas, max_replicas=config.scaling.max_replicas,
            initial_replicas=config.num_replicas, metrics_interval_s=1.0, look_back_period_s=2.0,
            upscale_delay_s=0.0, downscale_delay_s=0.0,  # the policy keeps its own delays
            policy=AutoscalingPolicy(policy_function=SLOAutoscalingPolicy,
                                     policy_kwargs=dataclasses.asdict(config.scaling)))
    return options


def _deployment(cls: type) -> Deployment:
    return serve.deployment(cls)  # type: ignore[return-value]  # the class form returns a Deployment


def build_app(config: FleetConfig) -> Any:
    """The Ray Serve application of a fleet (``serve.run(build_app(config))``)."""
    engine = _deployment(EngineDeployment).options(**_engine_options(config)).bind(config)
    ingress = _deployment(serve.ingress()(IngressDeployment)).options(
        name=INGRESS, num_replicas=1, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=100_000, graceful_shutdown_timeout_s=config.slo.drain_timeout_s + 5)
    return ingress.bind(engine, config)


def build(args: dict[str, Any]) -> Any:
    """KubeRay / `serve run` entry point: ``args = {"cli_args": [...]}``, the flags of
    `servewise serve --replicas`."""
    from servewise.cli import fleet_config_from_argv

    return build_app(fleet_config_from_argv(list(args.get("cli_args", []))))
