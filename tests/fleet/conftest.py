"""Fleets on a real local Ray, started the way users start them: `servewise serve --replicas N`."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

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


@dataclass
class Outcome:
    client: str  # which client (a session) sent it
    version: str | None  # X-ServeWise-Version: the model version that answered
    status: int
    finished: bool  # a finish_reason arrived
    error: str | None  # an SSE error event's message


class StreamingLoad:
    """Clients in threads, each streaming the same completion in a loop until the block ends."""

    def __init__(self, base_url: str, bodies: dict[str, dict[str, Any]], pause_s: float = 0.0,
                 session_header: bool = False) -> None:
        self.base_url, self.pause_s, self.session_header = base_url, pause_s, session_header
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self.threads = [threading.Thread(target=self._client, args=(name, body), daemon=True)
                        for name, body in bodies.items()]

    def __enter__(self) -> StreamingLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def _client(self, name: str, body: dict[str, Any]) -> None:
        headers = {"x-session-id": name} if self.session_header else {}
        with httpx.Client(base_url=self.base_url, timeout=120, headers=headers) as c:
            while not self.stop.is_set():
                finished, error = False, None
                with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            chunk = json.loads(line[6:])
                            error = chunk["error"].get("message") if "error" in chunk else error
                            finished = finished or any(ch["finish_reason"] for ch in chunk.get("choices", []))
                    self.outcomes.append(Outcome(name, r.headers.get("x-servewise-version"), r.status_code,
                                                 finished, error))
                self.stop.wait(self.pause_s)
