"""`servewise rollout start|status|promote|pause|resume|abort`: a fleet's admin API from the terminal.

It talks HTTP only (the ingress's ``/v1/admin/rollout``), with the admin API key when the fleet has
keys. ``start`` checks the spec here first, so a bad one never reaches the fleet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from servewise.config import ConfigError
from servewise.fleet.rollout_spec import rollout_spec_from_text, spec_to_dict

COMMANDS = ("start", "status", "promote", "pause", "resume", "abort")


def run(command: str, base_url: str, api_key: str | None, spec_path: str | None, as_json: bool,
        timeout_s: float = 900.0) -> tuple[int, str]:
    """(exit status, text to print)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/v1/admin/rollout"
    with httpx.Client(timeout=timeout_s, headers=headers) as client:
        if command == "status":
            resp = client.get(url)
        elif command == "start":
            if not spec_path:
                raise ConfigError("servewise rollout start needs a spec file (rollout.yaml)")
            try:
                text = Path(spec_path).read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read {spec_path}: {exc.strerror or exc}") from None
            resp = client.post(url, json=spec_to_dict(rollout_spec_from_text(text)))
        else:
            resp = client.post(f"{url}/{command}")
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:500]
        return 1, f"servewise rollout {command}: error: HTTP {resp.status_code}: {message}"
    body = resp.json()
    return 0, json.dumps(body, indent=2) if as_json else describe(body)


def describe(status: dict[str, Any]) -> str:
    lines = [f"baseline {status['baseline']}; versions {', '.join(status['versions'])}"]
    rollout = status.get("rollout")
    if not rollout:
        return "\n".join(lines + ["no rollout yet"])
    spec = rollout["spec"]
    lines.append(f"rollout {rollout['rollout_id']} ({spec['mode']}): {rollout['candidate']} against "
                 f"{rollout['baseline']}, {rollout['phase']}, candidate share {rollout['share'] * 100:g} %"
                 + (f", step {rollout['step_index'] + 1}/{len(spec['steps'])}" if spec["mode"] == "canary" else ""))
    for version, w in (status.get("windows") or {}).items():
        att = "—" if w["attainment"] is None else f"{w['attainment'] * 100:.1f} %"
        lines.append(f"  {version}: {w['requests']} requests this step, attainment {att}, {w['errors']} errors, "
                     f"{w['shed']} shed, TTFT p99 {_ms(w['ttft_p99_s'])}, TPOT p99 {_ms(w['tpot_p99_s'])}")
    shadow = status.get("shadow")
    if shadow:
        g = shadow["greedy"]
        lines.append(f"  shadow: {shadow['num_mirrored']} mirrored ({shadow['num_skipped']} skipped), greedy exact "
                     f"match {_pct(g['exact_match_rate'])}, token agreement {_pct(g['token_agreement'])}")
    for d in rollout["decisions"][-5:]:
        lines.append(f"  {d['decision']} (step {d['step']}, {d['share'] * 100:g} %): {'; '.join(d['reasons'])}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1e3:.0f} ms"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"
