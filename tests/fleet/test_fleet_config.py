"""`servewise serve --replicas ...` flags -> FleetConfig -> the Ray Serve application (no cluster needed)."""

from __future__ import annotations

import pytest

from servewise.cli import fleet_config_from_argv, main
from servewise.config import ConfigError
from servewise.fleet.ray_app import ENGINE, INGRESS, build, build_engine


def test_flags_become_a_fleet_config():
    config = fleet_config_from_argv(["--replicas", "2", "--min-replicas", "1", "--max-replicas", "4",
                                     "--replica-threads", "3", "--router", "pow2", "--port", "9001"])
    assert config.num_replicas == 2 and config.scaling is not None and config.scaling.max_replicas == 4
    assert config.engine.device.num_threads == 3 and config.num_cpus_per_replica == 3.0
    assert config.router == "pow2" and config.server.port == 9001 and config.max_replicas == 4
    assert fleet_config_from_argv([]).num_replicas == 1  # KubeRay with no flags: one replica


@pytest.mark.parametrize("argv, message", [
    (["--replicas", "2", "--min-replicas", "1"], "both --min-replicas and --max-replicas"),
    (["--replicas", "5", "--min-replicas", "1", "--max-replicas", "4"], "within --min-replicas"),
    (["--replicas", "0"], "--replicas must be"),
    (["--replicas", "1", "--num-gpus-per-replica", "1"], "needs --device cuda"),
])
def test_impossible_fleets_are_refused_with_the_reason(argv, message):
    with pytest.raises(ConfigError, match=message):
        fleet_config_from_argv(argv)


def test_the_cli_says_why_and_exits_2(capsys):
    assert main(["serve", "--replicas", "3", "--min-replicas", "1", "--max-replicas", "2"]) == 2
    assert "within --min-replicas" in capsys.readouterr().err


def test_the_kuberay_entry_points_build_the_applications_from_cli_flags():
    args = {"cli_args": ["--replicas", "2", "--min-replicas", "1", "--max-replicas", "3"]}
    ingress = build(args)._bound_deployment
    engine = build_engine(args)._bound_deployment
    assert (ingress.name, engine.name) == (INGRESS, ENGINE)
    assert ingress.init_args[0].serve_argv == tuple(args["cli_args"])
    autoscaling = engine._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.initial_replicas) == (1, 2 + 1, 2)
    assert engine._deployment_config.request_router_config.request_router_class.endswith("SLORouter")
    assert engine._deployment_config.max_ongoing_requests > 100  # our admission decides, not Ray's count

