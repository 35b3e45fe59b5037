"""The rollout runtime with a fake cluster: deploys, steps, the 100 % step's reference, promotion,
rollback, persistence across a restart (no Ray)."""

from __future__ import annotations

import asyncio
import time

import pytest

from servewise.config import ConfigError, EngineConfig
from servewise.fleet.fleet_call import VersionTarget
from servewise.fleet.ingress import FleetBackend
from servewise.fleet.rollout_runtime import RolloutConflictError, RolloutManager, RolloutStore, SavedState
from servewise.fleet.rollout_spec import RolloutSpec, rollout_spec_from_dict
from servewise.fleet.rollout_window import Finished, RequestOutcome
from servewise.fleet.router_core import FleetRouter

pytestmark = pytest.mark.asyncio


class Memory:
    def __init__(self) -> None:
        self.value = None

    def get(self):
        return self.value

    async def put(self, value):
        self.value = value


class FakeCluster:
    def __init__(self) -> None:
        self.deployed: list[str] = []
        self.deleted: list[str] = []

    def check_candidate(self, spec: RolloutSpec) -> EngineConfig:
        if spec.candidate.model == "/missing":
            raise ConfigError("rollout spec: candidate.model: no such file")
        return EngineConfig()

    def deploy(self, version: str, engine: EngineConfig, replicas: int) -> VersionTarget:
        self.deployed.append(version)
        return self.attach(version)

    def attach(self, version: str) -> VersionTarget:
        return VersionTarget(version, FleetRouter(), None, None)  # type: ignore[arg-type]

    def delete(self, version: str) -> None:
        self.deleted.append(version)


def make(saved: SavedState | None = None, store: Memory | None = None):
    store = store or Memory()
    cluster = FakeCluster()
    fleet = FleetBackend(None, None, cluster.attach((saved or SavedState()).baseline))  # type: ignore[arg-type]
    manager = RolloutManager(fleet, None, RolloutStore(store), cluster, saved or SavedState())  # type: ignore[arg-type]
    fleet.rollout = manager
    return manager, fleet, cluster, store


def serve(manager: RolloutManager, version: str, n: int, met: bool = True) -> None:
    for _ in range(n):
        manager.on_finished(Finished(time.time(), version, RequestOutcome.SERVED, met, 0.1, 0.01))


SPEC = rollout_spec_from_dict({"steps": [50, 100], "step_min_duration": 0, "step_min_requests": 10,
                               "analysis": {"window": 1, "min_samples": 10}})


async def test_a_good_canary_climbs_judges_100_percent_on_the_step_before_and_takes_over():
    manager, fleet, cluster, store = make()
    status = await manager.begin(SPEC)
    assert cluster.deployed == ["v2"] and sorted(fleet.versions) == ["v1", "v2"] and status["rollout"]["share"] == 0.5
    with pytest.raises(RolloutConflictError):
        await manager.begin(SPEC)
    serve(manager, "v1", 20)
    serve(manager, "v2", 20)
    await manager.tick()
    assert manager.controller.state.share == 1.0
    serve(manager, "v2", 20)  # the baseline serves nobody now; its previous step is the reference
    await manager.tick()
    assert manager.controller.state.phase.value == "promoted"
    assert fleet.baseline == "v2" and sorted(fleet.versions) == ["v2"] and cluster.deleted == ["v1"]
    saved = SavedState.from_dict(store.value)
    assert saved.baseline == "v2" and saved.next_version == 3 and saved.history[-1]["phase"] == "promoted"


async def test_a_worse_canary_is_removed_and_an_unknown_model_never_deploys():
    manager, fleet, cluster, _ = make()
    with pytest.raises(ConfigError):
        await manager.begin(rollout_spec_from_dict({"candidate": {"model": "/missing"}}))
    assert cluster.deployed == []
    await manager.begin(SPEC)
    serve(manager, "v1", 40)
    serve(manager, "v2", 40, met=False)
    await manager.tick()
    assert manager.controller.state.phase.value == "rolled_back"
    assert sorted(fleet.versions) == ["v1"] and cluster.deleted == ["v2"]
    assert manager.version_for("anyone") is None
    names = {s.name for s in manager.metric_samples()}
    assert "servewise:rollout_decisions_total" in names


async def test_a_restarted_ingress_picks_the_rollout_up():
    manager, _, _, store = make()
    await manager.begin(SPEC)
    await manager.command("pause")
    again, fleet, cluster, _ = make(RolloutStore(store).load(), store)
    again.start(asyncio.get_running_loop())
    try:
        assert again.controller.state.phase.value == "paused" and sorted(fleet.versions) == ["v1", "v2"]
        assert (await again.command("abort"))["rollout"]["phase"] == "aborted" and cluster.deleted == ["v2"]
    finally:
        again.stop()
