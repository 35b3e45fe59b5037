"""Autoscaling on SLO headroom, on a real local Ray: 1 -> 2 replicas under load, 2 -> 1 after,
with no admitted request failing on the way (a small random model stands in for a fast engine)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.fleet.conftest import StreamingLoad, replica_pids, start_fleet, stop_fleet
from tests.server.conftest import metric_value

pytestmark = pytest.mark.slow

# Steps of the tiny model take a few ms; a 2 ms TPOT target makes 16 streams "over the limit" and an
# idle replica far under it. Admission only observes, so the load is never shed: the autoscaler
# alone has to answer it.
FLAGS = ("--min-replicas", "1", "--max-replicas", "2", "--replica-threads", "1", "--scale-down-delay", "5",
         "--kv-cache-memory", "64MiB", "--admission", "off",
         "--slo-class", "interactive:ttft=1s@p99,tpot=2ms,priority=0")


def _accepting(http: httpx.Client) -> int:
    return int(metric_value(http.get("/metrics").text, "servewise:fleet_replicas", state="accepting"))


def _bodies(num_clients: int, max_tokens: int) -> dict[str, dict]:
    return {f"c{i}": {"prompt": f"client {i} " + "word " * 100, "max_tokens": max_tokens, "ignore_eos": True}
            for i in range(num_clients)}


def test_scales_up_under_load_and_back_down_after_with_no_failed_request(tmp_path_factory, tiny_dirs):
    fleet = start_fleet(tmp_path_factory.mktemp("autoscale"), "--model", str(tiny_dirs["llama"]), *FLAGS)
    try:
        with httpx.Client(base_url=fleet.base_url, timeout=60) as http:
            assert _accepting(http) == 1
            with StreamingLoad(fleet.base_url, _bodies(16, 200)) as load:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and _accepting(http) < 2:
                    time.sleep(1)
                assert _accepting(http) == 2, fleet.log()[-4000:]
                time.sleep(3)  # both replicas serve the load for a while
            # A trickle keeps running across the scale-down: the replica that goes drains it.
            with StreamingLoad(fleet.base_url, _bodies(1, 60), pause_s=0.3) as trickle:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and len(replica_pids()) > 1:
                    time.sleep(1)
                assert len(replica_pids()) == 1 and _accepting(http) == 1, fleet.log()[-4000:]
            outcomes = load.outcomes + trickle.outcomes
            assert outcomes and all(o.status == 200 and o.finished and o.error is None for o in outcomes), outcomes
            assert "Using custom autoscaling policy 'servewise.fleet.ray_app.SLOAutoscalingPolicy'" in fleet.log()
    finally:
        assert stop_fleet(fleet) == 0
