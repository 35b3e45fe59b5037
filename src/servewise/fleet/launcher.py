"""`servewise serve --replicas N`: start (or join) Ray, run the fleet, drain on SIGTERM.

The first SIGTERM/SIGINT drains: the ingress answers 503 to new requests and waits for the
ones in flight (``--drain-timeout``), then Ray Serve stops the replicas (each waits for its own
in-flight requests) and the process exits 0. A second signal stops at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

from servewise import __version__
from servewise.fleet.config import FleetConfig

logger = logging.getLogger("servewise.fleet")


def _ray_init_kwargs(config: FleetConfig) -> dict[str, Any]:
    if config.ray_address:
        return {"address": config.ray_address}
    # "local": always a new cluster, never one some other process started on this machine.
    # A local cluster: enough logical CPUs for the most replicas autoscaling may ask for, twice over
    # so a rollout candidate of the same size fits beside them (Ray would leave the rest pending);
    # more than the machine has shares its cores, which is said.
    needed = 2 * config.max_replicas * config.num_cpus_per_replica
    cores = os.cpu_count() or 1
    if needed > cores:
        logger.warning("room for %g replica CPUs (a rollout candidate included) on %d cores: replicas "
                       "will share cores", needed, cores)
    return {"address": "local", "num_cpus": max(cores, int(needed + 0.999)), "include_dashboard": False}


def run_fleet(config: FleetConfig) -> int:
    import ray
    from ray import serve

    from servewise.errors import ModelLoadError
    from servewise.fleet.ray_app import build_engine_app, build_ingress_app
    from servewise.fleet.ray_engines import engine_app_name, forget_state
    from servewise.loading import load_tokenizer

    try:  # a path or file that cannot work fails here, in a second, not after Ray's retries
        load_tokenizer(config.engine.model)
    except ModelLoadError as exc:
        print(f"servewise serve: error: model failed to load: {exc}", file=sys.stderr, flush=True)
        return 1
    started = time.monotonic()
    signals = _SignalLatch()  # from here on: a signal during start-up stops the fleet once it is up
    ray.init(**_ray_init_kwargs(config))
    signals.install()  # again: ray.init put its own fatal-signal handler in place (it aborts on SIGTERM)
    try:
        serve.start(http_options={"host": config.server.host, "port": config.server.port})
        forget_state(config.app_name)  # a fleet started afresh begins at v1, whatever ran here before
        serve.run(build_engine_app(config), name=engine_app_name(config.app_name, "v1"), route_prefix=None)
        ingress = serve.run(build_ingress_app(config), name=config.app_name, route_prefix="/")
    except Exception as exc:  # a replica that cannot load its model ends here, after Ray's retries
        print(f"servewise serve: error: the fleet failed to start: {str(exc).strip().splitlines()[0]}",
              file=sys.stderr, flush=True)
        _stop()
        return 1
    scaling = (f"autoscaling {config.scaling.min_replicas}..{config.scaling.max_replicas}"
               if config.scaling else "fixed")
    logger.info("ServeWise %s fleet listening on http://%s:%d (OpenAI API under /v1): %d engine replicas (%s), "
                "router %s, ready in %.0f s", __version__, config.server.host, config.server.port,
                config.num_replicas, scaling, config.router, time.monotonic() - started)
    try:
        signals.wait_first()
        logger.info("draining: new requests get 503, in-flight requests get up to %g s", config.slo.drain_timeout_s)
        ingress.drain.remote(config.slo.drain_timeout_s).result(timeout_s=config.slo.drain_timeout_s + 10)
    except _StopNow:
        logger.warning("second signal: stopping now")
    except Exception as exc:  # drain is best effort: Ray Serve still lets each replica finish its requests
        logger.warning("ingress drain: %s", exc)
    finally:
        _stop()
    logger.info("stopped")
    return 0


def _stop() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


class _StopNow(Exception):
    pass


class _SignalLatch:
    """The first SIGTERM/SIGINT starts the drain; a second one interrupts it (``_StopNow``)."""

    def __init__(self) -> None:
        self.count = 0
        self.install()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        self.count += 1
        logger.info("received %s", signal.Signals(sig).name)
        if self.count >= 2:
            raise _StopNow

    def wait_first(self) -> None:
        while self.count == 0:
            time.sleep(0.2)
