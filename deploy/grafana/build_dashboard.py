"""Writes servewise.json, the Grafana dashboard of ServeWise's SLOs, load and tenants.

The JSON is generated so panels stay uniform; edit this file, then run
``python deploy/grafana/build_dashboard.py`` (tests/slo/test_dashboard.py checks the
committed JSON matches). Import the JSON in Grafana and pick a Prometheus datasource.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("servewise.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
CLASS = 'slo_class=~"$slo_class"'
TENANT = 'tenant=~"$tenant"'
# One server, or a fleet's ingress (replica="fleet"): not its replicas' own series again.
WHOLE = 'replica=~"|fleet"'
REPLICAS = 'replica!~"|fleet"'


def _quantiles(metric: str) -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by (le) (rate({metric}{{{WHOLE}}}[$__rate_interval])))",
             f"p{round(q * 100)}") for q in (0.5, 0.9, 0.99)]


# (row title, [(panel title, unit, [(expr, legend)], description)])
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]], str]]]] = [
    ("SLOs", [
        ("SLO attainment by class and window", "percentunit",
         [(f"servewise:slo_attainment_ratio{{{CLASS}}}", "{{slo_class}} {{window}}")],
         "Share of served requests that met every target of their class."),
        ("Goodput", "reqps",
         [(f"servewise:goodput_requests_per_second{{{CLASS}}}", "{{slo_class}}")],
         "Requests per second that met their SLO (last minute)."),
        ("Error budget remaining (1 h)", "percentunit",
         [(f"servewise:error_budget_remaining_ratio{{{CLASS}}}", "{{slo_class}}")],
         "1 = untouched, 0 = spent, below 0 = overspent. Bad = failed, shed or missed SLO."),
        ("Error budget burn rate", "none",
         [(f"servewise:error_budget_burn_rate{{{CLASS}}}", "{{slo_class}} {{window}}")],
         "1 spends the budget at exactly the allowed pace; 14.4 over 1 h is the classic page threshold."),
    ]),
    ("Latency", [
        ("Time to first token", "s", _quantiles("servewise:time_to_first_token_seconds_bucket"), ""),
        ("Inter-token latency", "s", _quantiles("servewise:inter_token_latency_seconds_bucket"), ""),
        ("Admission: predicted minus actual TTFT", "s",
         [("servewise:admission_predicted_ttft_error_seconds", "{{stat}}")],
         "Above 0: admission predicts slower than real (sheds too early); below 0: too late."),
    ]),
    ("Load", [
        ("Queue", "none",
         [("sum(servewise:num_requests_waiting)", "waiting"), ("sum(servewise:num_requests_running)", "running")],
         ""),
        ("KV cache usage", "percentunit", [("servewise:kv_cache_usage_perc", "{{model_name}}")], ""),
        ("429s by reason", "reqps",
         [('sum by (error_type) (rate(servewise:request_failure_total{error_type=~"overloaded|rate_limited"}'
           '[$__rate_interval]))', "{{error_type}}"),
          ("sum by (reason) (rate(servewise:requests_shed_total[$__rate_interval]))", "shed: {{reason}}")],
         "Overloaded = shed by admission control; rate_limited = a tenant over its limits."),
    ]),
    ("Fleet (servewise serve --replicas)", [
        ("Requests routed, by replica and reason", "reqps",
         [("sum by (replica, reason) (rate(servewise:router_requests_total[$__rate_interval]))",
           "{{replica}} {{reason}}")],
         "prefix_affinity: it held the most of the prompt; least_ttft: lowest predicted TTFT; tie: random among "
         "equals; retry: after a shed or a failure elsewhere."),
        ("TTFT p99 per replica", "s",
         [("histogram_quantile(0.99, sum by (le, replica) (rate(servewise:time_to_first_token_seconds_bucket"
           f"{{{REPLICAS}}}[$__rate_interval])))", "{{replica}}")],
         "Measured by each replica from its own arrival (the ingress's series above include routing)."),
        ("Router: prefix hit ratio and TTFT prediction error", "none",
         [("servewise:router_prefix_hit_ratio", "hit ratio {{kind}}"),
          ("servewise:router_predicted_ttft_error_seconds", "error (s) {{stat}}")],
         "estimated: from the prompt blocks the router sent each replica; actual: what the replicas found."),
        ("Replicas: queue, stats age, failovers", "none",
         [(f"servewise:num_requests_waiting{{{REPLICAS}}}", "waiting {{replica}}"),
          ("servewise:router_replica_stats_age_seconds", "stats age (s) {{replica}}"),
          ("servewise:fleet_replicas", "replicas {{state}}"),
          ("increase(servewise:router_failovers_total[$__rate_interval])", "failovers"),
          ("increase(servewise:router_cut_streams_total[$__rate_interval])", "cut streams")],
         "Stats older than a few seconds mean a replica stopped publishing (dying or stalled)."),
    ]),
    ("Rollouts (servewise rollout)", [
        ("Traffic share per version", "percentunit",
         [("servewise:rollout_traffic_ratio", "{{version}}"), ("servewise:rollout_step", "step")],
         "The candidate's share of users' traffic, step by step; 0 after a rollback."),
        ("SLO attainment per version (this step)", "percentunit",
         [("servewise:rollout_slo_attainment_ratio", "{{version}}")],
         "What the gate compares at the end of every analysis window."),
        ("p99 TTFT and TPOT per version (this step)", "s",
         [("servewise:rollout_ttft_p99_seconds", "TTFT {{version}}"),
          ("servewise:rollout_tpot_p99_seconds", "TPOT {{version}}")], ""),
        ("Decisions and shadow agreement", "none",
         [("increase(servewise:rollout_decisions_total[$__rate_interval])", "{{decision}}"),
          ("servewise:shadow_exact_match_ratio", "shadow exact match"),
          ("servewise:shadow_token_agreement_ratio", "shadow token agreement")],
         "promote / extend / rollback / abort, as the gate or the operator decided."),
    ]),
    ("Tenants", [
        ("Cost per tenant", "currencyUSD",
         [(f"sum by (tenant) (rate(servewise:tenant_cost_dollars_total{{{TENANT}}}[$__rate_interval])) * 3600",
           "{{tenant}}")],
         "Dollars per hour of device time used by each tenant's requests."),
        ("Tokens per tenant", "short",
         [(f"sum by (tenant) (rate(servewise:tenant_prompt_tokens_total{{{TENANT}}}[$__rate_interval]))",
           "{{tenant}} prompt"),
          (f"sum by (tenant) (rate(servewise:tenant_completion_tokens_total{{{TENANT}}}[$__rate_interval]))",
           "{{tenant}} completion")],
         "Tokens per second."),
    ]),
]


def _panel(panel_id: int, title: str, unit: str, queries: list[tuple[str, str]], description: str,
           x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id, "type": "timeseries", "title": title, "description": description,
        "datasource": DATASOURCE, "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(queries)],
    }


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": "All", "value": "$__all"}}


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for row_title, row_panels in ROWS:
        panels.append({"id": next_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        for i, (title, unit, queries, description) in enumerate(row_panels):
            panels.append(_panel(next_id, title, unit, queries, description, x=12 * (i % 2), y=y + 8 * (i // 2)))
            next_id += 1
        y += 8 * ((len(row_panels) + 1) // 2)
    templating = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0},
        _variable("slo_class", "SLO class", "label_values(servewise:slo_attainment_ratio, slo_class)"),
        _variable("tenant", "Tenant", "label_values(servewise:tenant_prompt_tokens_total, tenant)"),
    ]
    return {
        "uid": "servewise-slo", "title": "ServeWise: SLOs, load and tenants", "tags": ["servewise", "llm"],
        "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1, "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"}, "timezone": "browser",
        "annotations": {"list": []}, "templating": {"list": templating}, "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT}")
