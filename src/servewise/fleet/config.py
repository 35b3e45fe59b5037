"""The fleet's configuration: what `servewise serve --replicas` turns its flags into."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from servewise.config import ConfigError, EngineConfig, ServerConfig
from servewise.fleet.autoscaling import ScalingConfig
from servewise.server.slo_runtime import SLOSettings

ROUTER_NAMES = ("servewise", "pow2", "prefix-affinity")


@dataclass(frozen=True)
class FleetConfig:
    engine: EngineConfig  # every replica's engine (device.num_threads = --replica-threads)
    server: ServerConfig  # the ingress's HTTP side: host, port, body limits
    slo: SLOSettings  # classes, admission, keys, drain: the same as `servewise serve`
    num_replicas: int  # replicas at start
    # Autoscaling on SLO headroom when set (``--min-replicas``/``--max-replicas``): bounds, policy knobs.
    scaling: ScalingConfig | None = None
    num_cpus_per_replica: float = 1.0  # Ray resources each engine replica reserves
    num_gpus_per_replica: float = 0.0
    ray_address: str | None = None  # join this Ray cluster; None starts a local one
    router: str = "servewise"  # servewise | pow2 (Ray's default) | prefix-affinity (Ray's prefix router)
    routing_stats_period_s: float = 0.5  # how often each replica publishes its stats to the routers
    flush_interval_s: float = 0.015  # replicas batch streamed outputs this long (Ray's per-message cost)
    app_name: str = "servewise"
    log_level: str = "info"  # of ServeWise's own loggers in the ingress and the replicas
    # The `servewise serve` flags the fleet started with, and the CLI's own parser of them: a
    # rollout candidate's engine is these flags followed by the candidate's (later ones win).
    serve_argv: tuple[str, ...] = ()
    engine_from_argv: Callable[[Sequence[str]], EngineConfig] | None = None

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ConfigError("--replicas must be ≥ 1")
        if self.scaling is not None and not (self.scaling.min_replicas <= self.num_replicas
                                             <= self.scaling.max_replicas):
            raise ConfigError(f"--replicas {self.num_replicas} must lie within --min-replicas "
                              f"{self.scaling.min_replicas} and --max-replicas {self.scaling.max_replicas}")
        if self.num_cpus_per_replica < 0 or self.num_gpus_per_replica < 0:
            raise ConfigError("--num-cpus-per-replica and --num-gpus-per-replica must be ≥ 0")
        if self.num_gpus_per_replica > 0 and not self.engine.device.device.startswith("cuda"):
            raise ConfigError("--num-gpus-per-replica needs --device cuda")
        if self.router not in ROUTER_NAMES:
            raise ConfigError(f"--router must be one of {', '.join(ROUTER_NAMES)}, got {self.router!r}")
        if not 0 < self.routing_stats_period_s <= 1.0:
            raise ConfigError("the routing stats period must be in (0, 1] s")

    @property
    def max_replicas(self) -> int:
        return self.scaling.max_replicas if self.scaling is not None else self.num_replicas
