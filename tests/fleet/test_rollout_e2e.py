"""Rollouts on a real local fleet (`servewise serve --replicas 1`, a small random model standing in
for a fast engine), driven through the admin API and the `servewise rollout` CLI under steady load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import httpx
import pytest

from tests.fleet.conftest import Outcome, StreamingLoad, start_fleet, stop_fleet
from tests.server.conftest import metric_value

pytestmark = pytest.mark.slow

WINDOW = {"window": 2, "min_samples": 10}
# A generous SLO: the baseline meets it easily, a candidate 300 ms slower per step does not.
SLO = ("--slo-class", "interactive:ttft=2s@p99,tpot=150ms,priority=0,slack=1.5")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_dirs):
    server = start_fleet(tmp_path_factory.mktemp("rollout"), "--replicas", "1", "--replica-threads", "1",
                         "--model", str(tiny_dirs["llama"]), "--kv-cache-memory", "64MiB", *SLO)
    yield server
    assert stop_fleet(server) == 0


class Admin:
    """The fleet's rollout admin API (``admin.post("/abort")`` -> POST /v1/admin/rollout/abort)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def get(self, path: str = "") -> httpx.Response:
        return self.client.get("/v1/admin/rollout" + path)

    def post(self, path: str = "", **kwargs: object) -> httpx.Response:
        return self.client.post("/v1/admin/rollout" + path, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def admin(fleet):
    with httpx.Client(base_url=fleet.base_url, timeout=600) as c:
        yield Admin(c)


def sessions(base_url: str, num_sessions: int = 20, max_tokens: int = 8) -> StreamingLoad:
    """Sessions (X-Session-Id) sending short greedy completions in a loop. The split hashes the
    rollout id with each session, so at a 25 % step all of 6 sessions missed the candidate 18 % of
    the time (0.75^6); with 20, 0.3 %."""
    bodies = {f"s{i}": {"prompt": f"s{i} says hello", "max_tokens": max_tokens, "temperature": 0}
              for i in range(num_sessions)}
    return StreamingLoad(base_url, bodies, session_header=True)


def wait_for(admin: Admin, phases: set[str], timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = admin.get("").json()
        if status["rollout"] and status["rollout"]["phase"] in phases:
            return dict(status)
        time.sleep(0.5)
    raise AssertionError(f"no phase in {phases} after {timeout_s} s: {json.dumps(admin.get('').json())[:3000]}")


def canary(engine_args: list[str], steps: list[int], **extra: object) -> dict:
    return {"steps": steps, "step_min_duration": 3, "step_min_requests": 10, "analysis": WINDOW,
            "candidate": {"engine_args": engine_args}, **extra}


def test_bad_specs_are_refused_before_any_traffic_moves(admin):
    for spec, message in (({"steps": [10, 50]}, "end at 100"), ({"steps": [10, 250]}, "share"),
                          ({"candidate": {"model": "/nope/model.gguf"}}, "candidate.model"),
                          ({"candidate": {"engine_args": ["--max-num-seqs", "lots"]}}, "engine flags")):
        resp = admin.post("", json=spec)
        assert resp.status_code == 400 and message in resp.json()["error"]["message"], resp.text
    assert admin.get("").json()["versions"] == ["v1"]


def test_a_slow_canary_is_rolled_back_within_two_windows_of_enough_evidence(fleet, admin):
    with sessions(fleet.base_url) as load:
        time.sleep(2)
        started = admin.post("", json=canary(["--fault-step-delay-ms", "300"], [25, 50, 100]))
        assert started.status_code == 201, started.text
        status = wait_for(admin, {"rolled_back"})
    rollout = status["rollout"]
    assert rollout["share"] == 0 and status["versions"] == ["v1"]  # removed
    judged = [d for d in rollout["decisions"] if d["decision"] in ("extend", "rollback", "promote")
              and min(d["figures"]["candidate"]["requests"], d["figures"]["baseline"]["requests"]) >= WINDOW["min_samples"]]
    assert judged[-1]["decision"] == "rollback" and len(judged) <= 2, judged
    assert any("p99" in r or "missed SLO" in r for r in judged[-1]["reasons"])
    to_candidate = sum(1 for o in load.outcomes if o.version not in (None, "v1"))
    assert 0 < to_candidate / len(load.outcomes) < 0.5


def test_a_failing_canary_is_rolled_back(fleet, admin):
    with sessions(fleet.base_url, num_sessions=8, max_tokens=4):
        time.sleep(1)
        # 5 % failures against a 1 % tolerance: ~250 requests make it significant (README's table)
        assert admin.post("", json=canary(["--fault-fail-ratio", "0.05"], [50, 100], step_min_requests=400,
                                          analysis={"window": 2, "min_samples": 60})).status_code == 201
        status = wait_for(admin, {"rolled_back"}, timeout_s=300)
    last = status["rollout"]["decisions"][-1]
    assert last["decision"] == "rollback" and any("errors" in r for r in last["reasons"]), last


def test_sessions_stick_to_one_version_and_a_good_canary_becomes_the_baseline(fleet, admin):
    long_body = {"prompt": "a long story", "max_tokens": 400, "ignore_eos": True}
    with sessions(fleet.base_url) as load, httpx.Client(base_url=fleet.base_url, timeout=300) as c:
        assert admin.post("", json=canary([], [50, 100])).status_code == 201
        status = wait_for(admin, {"running"})
        in_flight = threading.Thread(target=lambda: load.outcomes.append(Outcome(
            "long", None, (r := c.post("/v1/completions", json=long_body)).status_code,
            r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length", None)))
        in_flight.start()
        wait_for(admin, {"promoted"}, timeout_s=300)
        time.sleep(2)
        in_flight.join(300)
    status = admin.get("").json()
    new = status["rollout"]["candidate"]
    assert status["baseline"] == new and status["versions"] == [new]  # the old version is gone, drained
    assert all(o.status == 200 and o.finished for o in load.outcomes), [o for o in load.outcomes if o.status != 200]
    versions_per_session: dict[str, set[str]] = defaultdict(set)
    for o in load.outcomes:
        if o.version is not None:
            versions_per_session[o.client].add(o.version)
    # Sticky: within the 50 % step a session never changed version (it may move once, at promotion).
    assert all(len(v) <= 2 for v in versions_per_session.values())


def test_a_shadow_of_an_identical_version_agrees_and_is_never_billed(fleet, admin):
    usage_before = httpx.get(fleet.base_url + "/v1/usage").json()
    slo_before = metric_value(httpx.get(fleet.base_url + "/metrics").text, "servewise:time_to_first_token_seconds_count",
                              replica="fleet")
    assert admin.post("", json={"mode": "shadow", "shadow": {"sample": 1.0, "duration": 8}}).status_code == 201
    with sessions(fleet.base_url, num_sessions=3) as load:
        status = wait_for(admin, {"completed"}, timeout_s=120)
    report = status["rollout"]["shadow_report"]
    assert report["num_mirrored"] >= 5 and report["greedy"]["exact_match_rate"] == 1.0
    assert report["greedy"]["token_agreement"] == 1.0
    sent = len(load.outcomes)
    usage_after = httpx.get(fleet.base_url + "/v1/usage").json()
    assert _requests(usage_after) - _requests(usage_before) == sent  # mirrored requests billed to nobody
    slo_after = metric_value(httpx.get(fleet.base_url + "/metrics").text, "servewise:time_to_first_token_seconds_count",
                             replica="fleet")
    assert slo_after - slo_before == sent


def _requests(usage: dict) -> int:
    return int(usage["total"]["num_requests"])


def test_pause_and_abort_from_the_cli_and_the_rollout_survives_an_ingress_restart(fleet, admin, tmp_path):
    spec = tmp_path / "rollout.yaml"
    spec.write_text("steps: [10, 100]\nstep_min_duration: 10m\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "servewise.cli", "rollout", *args, "--base-url", fleet.base_url],
                              capture_output=True, text=True, timeout=600)

    started = cli("start", str(spec))
    assert started.returncode == 0 and "running" in started.stdout, started.stderr
    assert cli("start", str(spec)).returncode == 1  # one at a time: 409
    assert "paused" in cli("pause").stdout
    before = admin.get("").json()["rollout"]
    ingress = subprocess.run(["pgrep", "-f", "ServeReplica:servewise:Ingress"], capture_output=True, text=True)
    os.kill(int(ingress.stdout.split()[0]), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(fleet.base_url + "/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    after = admin.get("").json()["rollout"]
    assert (after["rollout_id"], after["phase"], after["step_index"]) == \
        (before["rollout_id"], "paused", before["step_index"])
    aborted = cli("abort")
    assert aborted.returncode == 0 and "aborted" in aborted.stdout
    assert admin.get("").json()["versions"] == [admin.get("").json()["baseline"]]
