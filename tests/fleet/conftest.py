"""Fleets on a real local Ray, started the way users start them: `servewise serve --replicas N`."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.server.conftest import LiveServer, start_server


def start_fleet(tmp_dir: Path, *extra: str, name: str = "fleet") -> LiveServer:
    # Ray's own processes share the machine's two cores with the replicas: keep them quiet.
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
    return start_server(tmp_dir, *extra, ready_timeout_s=300.0, name=name, env=env)


def stop_fleet(fleet: LiveServer, timeout_s: float = 90.0) -> int:
    """SIGTERM (drain, stop the replicas and Ray) and the exit status."""
    fleet.process.send_signal(signal.SIGTERM)
    try:
        return fleet.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        fleet.process.kill()
        fleet.process.wait(30)
        raise AssertionError(f"the fleet did not stop within {timeout_s} s:\n{fleet.log()[-3000:]}") from None


def replica_pids() -> list[int]:
    """Process ids of the engine replicas (Ray names their workers after the deployment)."""
    out = subprocess.run(["pgrep", "-f", "ServeReplica:servewise-v[0-9]*:Engine"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]
