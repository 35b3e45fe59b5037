"""deploy/grafana/servewise.json: well-formed, and every query uses metrics ServeWise exports."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from servewise.slo.admission import AdmissionController
from servewise.slo.tracker import Outcome, SLOTracker
from servewise.slo.usage import RequestUsage, UsageConfig, UsageMeter

from .factories import FakeClock, make_config

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
# Exported by the server itself (server/metrics.py and its request_failure / requests_shed counters).
SERVER_METRICS = {
    "servewise:time_to_first_token_seconds_bucket", "servewise:inter_token_latency_seconds_bucket",
    "servewise:num_requests_waiting", "servewise:num_requests_running", "servewise:kv_cache_usage_perc",
    "servewise:request_failure_total", "servewise:requests_shed_total",
}
# What the dashboard must show (the list).
REQUIRED = SERVER_METRICS | {
    "servewise:slo_attainment_ratio", "servewise:goodput_requests_per_second",
    "servewise:error_budget_remaining_ratio", "servewise:admission_predicted_ttft_error_seconds",
    "servewise:tenant_cost_dollars_total", "servewise:tenant_prompt_tokens_total",
    "servewise:tenant_completion_tokens_total", "servewise:router_requests_total",
    "servewise:router_prefix_hit_ratio", "servewise:router_predicted_ttft_error_seconds",
    "servewise:fleet_replicas", "servewise:router_failovers_total", "servewise:rollout_traffic_ratio",
    "servewise:rollout_slo_attainment_ratio", "servewise:rollout_decisions_total",
}
METRIC = re.compile(r"servewise:[A-Za-z0-9_:]+")


def slo_metric_names() -> set[str]:
    """Names the slo helpers yield once they have data."""
    clock = FakeClock()
    tracker = SLOTracker(make_config(), clock=clock)
    tracker.record("interactive", Outcome.SUCCESS, ttft_s=0.1)
    admission = AdmissionController(clock=clock)
    admission.observe_ttft(1.0, 1.5)
    usage = UsageMeter(UsageConfig(price_per_device_hour_dollars=1.0))
    usage.record("t", RequestUsage(1, 0, 1, 0.1, 0.1))
    samples = [*tracker.metric_samples(), *admission.metric_samples(), *usage.metric_samples()]
    return {s.name for s in samples} | fleet_metric_names()


def fleet_metric_names() -> set[str]:
    """Names a fleet's ingress yields (router and failover series) once it routed a request."""
    from servewise.fleet.ingress import FleetBackend, VersionTarget
    from servewise.fleet.router_core import FleetRouter
    from servewise.fleet.routing import RouteReason
    from tests.fleet.factories import route, stats, tokens

    router = FleetRouter()
    router.update_stats([stats("a")])
    req = route("k", tokens(0, 40))
    router.on_routed(req, "a", RouteReason.LOAD)
    router.on_first_token("k", 0.5, 0)
    backend = FleetBackend(None, None, VersionTarget("v1", router, None, None))  # type: ignore[arg-type]
    return {s.name for s in backend.metric_samples()} | rollout_metric_names()


def rollout_metric_names() -> set[str]:
    """Names a fleet's rollout yields while a canary runs with traffic on both versions."""
    import time

    from servewise.fleet.rollout_controller import RolloutController
    from servewise.fleet.rollout_runtime import RolloutManager, RolloutStore, SavedState
    from servewise.fleet.rollout_spec import rollout_spec_from_dict
    from servewise.fleet.rollout_window import Finished, RequestOutcome
    from servewise.fleet.shadow import ShadowPair

    saved = SavedState()
    manager = RolloutManager(None, None, RolloutStore(None), None, saved)  # type: ignore[arg-type]
    manager.controller = RolloutController.start("r", rollout_spec_from_dict({"steps": [50, 100]}), "v1", "v2")
    manager._log_new_decisions()
    for version in ("v1", "v2"):
        manager.on_finished(Finished(time.time() + 1, version, RequestOutcome.SERVED, True, 0.1, 0.01))
    manager.on_mirrored(ShadowPair(True, [1], [1], 0.1, 0.1, 0.01, 0.01))
    return {s.name for s in manager.metric_samples()}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((GRAFANA / "servewise.json").read_text(encoding="utf-8"))


def queries(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]


def test_structure(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] >= 1
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and all(t["refId"] and t["expr"] for t in panel["targets"])


def test_queries_use_only_exported_metrics(dashboard):
    used = {name for expr in queries(dashboard) for name in METRIC.findall(expr)}
    exported = SERVER_METRICS | slo_metric_names()
    assert used <= exported, f"not exported by anything: {sorted(used - exported)}"
    assert used >= REQUIRED, f"missing from the dashboard: {sorted(REQUIRED - used)}"
    for v in dashboard["templating"]["list"][1:]:
        assert set(METRIC.findall(v["query"]["query"])) <= exported


def test_queries_are_balanced(dashboard):
    for expr in queries(dashboard):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        assert expr.count("[") == expr.count("]") and expr.count('"') % 2 == 0, expr


def test_committed_json_matches_the_generator():
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (GRAFANA / "servewise.json").read_text(encoding="utf-8") == module.render(), \
        "run: python deploy/grafana/build_dashboard.py"
