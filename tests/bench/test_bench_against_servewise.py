"""End to end: the bench against the real ``servewise serve`` on the embedded model.

Slow (it loads the model and generates on CPU): run with ``pytest -m slow tests/bench``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from servewise.bench import BenchConfig, LoadConfig, TargetConfig, run_benchmark, sweep, write_outputs
from servewise.bench.distributions import parse_length
from servewise.bench.slo import parse_slo
from servewise.bench.workloads import WorkloadConfig

READY_TIMEOUT_S = 120.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(root_url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"servewise serve exited with {server.returncode} before /ready")
        try:
            with urllib.request.urlopen(root_url + "/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"servewise serve was not ready within {READY_TIMEOUT_S:g}s")


@pytest.fixture(scope="module")
def servewise_root_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "servewise.cli", "serve", "--port", str(port),
                                   "--max-num-seqs", "8"], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_ready(f"http://127.0.0.1:{port}", server)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.mark.slow
def test_a_short_sweep_against_servewise_serve(servewise_root_url: str, tmp_path) -> None:
    config = BenchConfig(
        target=TargetConfig(servewise_root_url + "/v1", request_timeout_s=300),
        load=LoadConfig(points=sweep(rates=[0.5, 2.0]), num_requests=8, seed=0),
        workload=WorkloadConfig(input_len=parse_length("uniform:16,64"), output_len=parse_length("16")),
        slo=parse_slo("ttft=5s,tpot=500ms"),
        tokenizer="server",
    )
    result = run_benchmark(config)
    files = write_outputs(result, tmp_path)

    assert [p.summary.num_requests for p in result.points] == [8, 8]
    for point in result.points:
        failures = [r.error for r in point.records if r.outcome.value != "ok"]
        assert not failures, failures
        assert all(r.usage_reported and 1 <= r.num_output_tokens <= 16 for r in point.records)
        assert point.summary.ttft.count == 8
    assert result.tokenizer == "server" and result.max_model_len
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["schema_version"] == 1 and len(data["points"][0]["records"]) == 8
    assert "## Summary" in (tmp_path / "report.md").read_text()
    pngs = [f for f in files if f.suffix == ".png"]
    assert len(pngs) == 4
    assert all(f.read_bytes().startswith(PNG_MAGIC) and f.stat().st_size > 10_000 for f in pngs)
