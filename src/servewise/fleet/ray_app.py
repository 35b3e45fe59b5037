"""The fleet as Ray Serve applications: one ingress, and one engine application per model version.

```
client -HTTP-> Ray Serve proxy -> Ingress app "<app>" (the FastAPI app of `servewise serve`: auth,
                                   validation, tokenization, SLO class, tenants, usage; FleetBackend)
                                      | handle.options(stream=True).generate, routed by our router
                                      v
                                   Engine app "<app>-v1" x N replicas (ReplicaServer: AsyncEngine,
                                   admission, prefix cache); a rollout adds "<app>-v2" beside it
```

Everything here is glue: the decisions live in ``routing``/``router_core``/``autoscaling``/
``replica``/``ingress``/``rollout_*``. ``build_engine_app`` and ``build_ingress_app`` are what
`servewise serve --replicas` runs; ``build`` and ``build_engine`` are the import paths for a
KubeRay RayService.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig
from ray.serve.deployment import Deployment

from servewise.config import ConfigError, EngineConfig
from servewise.fleet.autoscaling import ReplicaPressure, ScalingConfig, ScalingState, decide
from servewise.fleet.config import FleetConfig
from servewise.fleet.fleet_call import VersionTarget
from servewise.fleet.ingress import FleetBackend
from servewise.fleet.messages import ReplicaCall, ReplicaMessage, ReplicaRequest
from servewise.fleet.ray_engines import ENGINE, EngineClient, engine_app_name, state_store
from servewise.fleet.ray_router import ROUTERS
from servewise.fleet.replica import ReplicaServer, ReplicaSettings
from servewise.fleet.rollout_spec import RolloutSpec
from servewise.fleet.router_core import RouterConfig
from servewise.server.backend import Backend, ReplicaReport

logger = logging.getLogger("servewise.fleet")
INGRESS = "Ingress"
DEPLOY_TIMEOUT_S = 600.0  # a rollout candidate that is not serving by then is refused


def _setup_logging(level: str) -> None:
    """ServeWise's loggers in a replica process print to stderr, which Ray forwards to the driver
    (`servewise serve`'s output): decisions and warnings are seen where the fleet was started."""
    root = logging.getLogger("servewise")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(getattr(logging, level.upper(), logging.INFO))
        root.propagate = False


class EngineDeployment:
    """One engine replica: loads the model, serves ``ReplicaRequest`` streams, publishes stats."""

    async def __init__(self, config: FleetConfig) -> None:  # type: ignore[misc]  # Ray awaits it
        _setup_logging(config.log_level)
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
    """The OpenAI API of the fleet: the same app as `servewise serve`, on a ``FleetBackend`` that
    reaches each version's engine application by name (so a rollout can add and delete them)."""

    async def __init__(self, config: FleetConfig) -> None:  # type: ignore[misc]
        _setup_logging(config.log_level)
        self.config = config

    def __serve_build_asgi_app__(self) -> Any:
        from servewise.fleet import rollout_routes
        from servewise.server.app import create_app

        app = create_app(self.config.server, self.config.engine, self._backend, self.config.slo)
        app.include_router(rollout_routes.router)
        return app

    def _backend(self) -> Backend:
        """Runs in the app's loading thread: the tokenizer here, the model's facts from a replica,
        the rollout state from the store (an ingress that restarts picks a rollout up again)."""
        from servewise.fleet.rollout_runtime import RolloutManager, RolloutStore
        from servewise.loading import load_tokenizer

        store = RolloutStore(state_store(self.config.app_name))
        saved = store.load()
        router_config = RouterConfig(admission_mode=self.config.slo.admission_mode)
        baseline = EngineClient(self.config.app_name, saved.baseline, router_config)
        tokenizer = load_tokenizer(self.config.engine.model)
        info = baseline.model_info()
        backend = FleetBackend(tokenizer, info, baseline.target(), structured=self.config.engine.structured)
        backend.rollout = RolloutManager(backend, self.config, store, RayDeployer(self.config, router_config), saved)
        return backend

    async def drain(self, timeout_s: float) -> None:
        """503 for new requests, then wait (up to timeout_s) for those in flight to finish."""
        from servewise.server.lifecycle import drain

        app: Any = self.app  # type: ignore[attr-defined]  # Ray's ASGI wrapper holds the built app
        await drain(app.state.servewise, timeout_s)


class RayDeployer:
    """Puts a model version on the cluster as its own engine application (the rollout's ``Deployer``)."""

    def __init__(self, config: FleetConfig, router_config: RouterConfig) -> None:
        self.config = config
        self.router_config = router_config

    def check_candidate(self, spec: RolloutSpec) -> EngineConfig:
        from servewise.errors import ModelLoadError
        from servewise.loading import load_tokenizer

        if self.config.engine_from_argv is None:
            raise ConfigError("this fleet was not started by `servewise serve`: it cannot build a candidate engine")
        model = ["--model", spec.candidate.model] if spec.candidate.model else []
        engine = self.config.engine_from_argv([*self.config.serve_argv, *model, *spec.candidate.engine_args])
        try:
            theirs = load_tokenizer(engine.model)
        except ModelLoadError as exc:
            raise ConfigError(f"rollout spec: candidate.model: {exc}") from None
        ours = load_tokenizer(self.config.engine.model)
        if _vocabulary(theirs) != _vocabulary(ours):
            raise ConfigError("rollout spec: the candidate's tokenizer differs from the baseline's; the ingress "
                              "tokenizes once for both, so a rollout needs one vocabulary (fine-tunes, "
                              "quantizations and engine options roll out; another model family does not)")
        return engine

    def deploy(self, version: str, engine: EngineConfig, replicas: int) -> VersionTarget:
        scaling = self.config.scaling
        config = dataclasses.replace(self.config, engine=engine, num_replicas=replicas if scaling is None else
                                     min(max(replicas, scaling.min_replicas), scaling.max_replicas))
        name = engine_app_name(self.config.app_name, version)
        serve._run(build_engine_app(config), name=name, route_prefix=None, _blocking=False)
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        while True:  # a version that cannot be placed or cannot load its model must not hang the API
            app = serve.status().applications.get(name)
            status = str(app.status) if app is not None else "NOT_STARTED"
            if status.endswith("RUNNING"):
                break
            if status.endswith("DEPLOY_FAILED") or time.monotonic() > deadline:
                message = (app.message if app is not None else "") or "not enough cluster resources?"
                serve.delete(name)
                raise ConfigError(f"the candidate version did not start ({status.split('.')[-1]}): "
                                  f"{message.strip().splitlines()[0][:300]}")
            time.sleep(1.0)
        client = EngineClient(self.config.app_name, version, self.router_config)
        client.model_info()
        return client.target()

    def attach(self, version: str) -> VersionTarget:
        return EngineClient(self.config.app_name, version, self.router_config).target()

    def delete(self, version: str) -> None:
        serve.delete(engine_app_name(self.config.app_name, version))


def _vocabulary(tokenizer: Any) -> tuple[int, tuple[int, ...], int]:
    """What must match for one tokenization to serve two models: size, end tokens, every token's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for i in range(tokenizer.vocab_size):
        digest.update(tokenizer.token_bytes(i) + b"\x00")
    return tokenizer.vocab_size, tuple(tokenizer.eos_token_ids), int.from_bytes(digest.digest(), "big")


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


def build_engine_app(config: FleetConfig) -> Any:
    """One version's engine application (``serve.run(..., name=engine_app_name(app, version))``)."""
    return _deployment(EngineDeployment).options(**_engine_options(config)).bind(config)


def build_ingress_app(config: FleetConfig) -> Any:
    """The ingress application; it finds the engine applications by name."""
    ingress = _deployment(serve.ingress()(IngressDeployment)).options(
        name=INGRESS, num_replicas=1, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=100_000, graceful_shutdown_timeout_s=config.slo.drain_timeout_s + 5)
    return ingress.bind(config)


def build(args: dict[str, Any]) -> Any:
    """KubeRay / `serve run` entry point of the ingress: ``args = {"cli_args": [...]}``, the flags of
    `servewise serve --replicas`. Deploy ``build_engine`` as the application ``<app>-v1`` beside it."""
    from servewise.cli import fleet_config_from_argv

    return build_ingress_app(fleet_config_from_argv(list(args.get("cli_args", []))))


def build_engine(args: dict[str, Any]) -> Any:
    """KubeRay / `serve run` entry point of the first engine version (the same ``cli_args``)."""
    from servewise.cli import fleet_config_from_argv

    return build_engine_app(fleet_config_from_argv(list(args.get("cli_args", []))))
