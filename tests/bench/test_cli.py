"""The command line: main(argv) against a fake server in a thread, and compare."""

import json
import math

import pytest

from servewise.bench.cli import build_run_parser, config_from_args, main
from servewise.bench.fake_server import FakeBehaviour, FakeOpenAIServer, FakeServerThread
from servewise.bench.schedule import LoadMode
from servewise.bench.workloads import WorkloadKind

from .factories import DATA_DIR


@pytest.fixture()
def server():
    with FakeServerThread(FakeOpenAIServer(FakeBehaviour(ttft_s=0.005, itl_s=0.001))) as running:
        yield running


def run_args(server, *args):
    return ["--base-url", server.base_url, "--input-len", "16", "--output-len", "4", "--no-progress", *args]


def test_a_sweep_writes_the_output_dir_and_compare_reads_it(server, tmp_path, capsys):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    assert main(run_args(server, "--rates", "40,80", "--num-requests", "6", "--slo", "ttft=1s,tpot=100ms",
                         "--output-dir", str(out_a))) == 0
    printed = capsys.readouterr().out
    assert "rate=40/s" in printed and "rate=80/s" in printed and "wrote results.json" in printed
    assert {p.name for p in out_a.iterdir()} >= {"results.json", "report.md", "timeline.png"}
    data = json.loads((out_a / "results.json").read_text())
    assert [p["summary"]["num_requests"] for p in data["points"]] == [6, 6]
    assert data["tokenizer"] == "server"
    assert main(run_args(server, "--rates", "40,80", "--num-requests", "3", "--output-dir", str(out_b))) == 0
    capsys.readouterr()
    assert main(["compare", str(out_a / "results.json"), str(out_b / "results.json")]) == 0
    printed = capsys.readouterr().out
    assert "TTFT p99 ms" in printed and "rate=80/s" in printed and "B/A" in printed


def test_api_key_from_the_environment_and_dataset_workload(server, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert main(["--base-url", server.base_url, "--dataset", str(DATA_DIR / "alpaca_tiny.jsonl"),
                 "--concurrency", "2", "--num-requests", "3", "--no-progress"]) == 0
    assert set(server.received_auth) == {"Bearer sk-env"}
    assert {m["messages"][0]["content"].split("\n")[0] for m in server.received} <= {
        "Name the capital city of the given country.", "Write a short poem about the first snow of winter.",
        "Add the numbers."}


def test_check_overload_exit_status(server, tmp_path, capsys):
    dataset = tmp_path / "shed.jsonl"
    dataset.write_text('{"prompt": "fake:{\\"status\\":429}"}\n')
    assert main(["--base-url", server.base_url, "--dataset", str(dataset), "--num-requests", "2",
                 "--no-progress", "--check-overload"]) == 1
    assert "2 without" in capsys.readouterr().out


def test_unreachable_server_is_a_clean_error(capsys):
    assert main(["--base-url", "http://127.0.0.1:9/v1", "--no-progress", "--num-requests", "1"]) == 1
    assert "servewise bench:" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--rate", "1", "--concurrency", "2"], ["--slo", "ttft=1"],
                                  ["--input-len", "uniform:9,1"], ["--num-requests", "5", "--duration-s", "3"],
                                  ["--max-throughput", "--duration-s", "3"]])
def test_bad_arguments_are_usage_errors(args):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2


def test_defaults_and_flag_mapping():
    args = build_run_parser().parse_args([])
    config = config_from_args(args, {})
    assert config.load.points[0].rate_per_s == math.inf and config.load.num_requests == 100
    assert config.workload.kind is WorkloadKind.SYNTHETIC and config.target.api_key is None
    args = build_run_parser().parse_args(["--concurrencies", "1,8,32", "--duration-s", "30", "--warmup-s", "5",
                                          "--dataset", "x.jsonl", "--endpoint", "completions", "--api-key", "k"])
    config = config_from_args(args, {"OPENAI_API_KEY": "ignored"})
    assert [p.concurrency for p in config.load.points] == [1, 8, 32]
    assert config.load.points[0].mode is LoadMode.CLOSED_LOOP and config.load.num_requests is None
    assert config.workload.kind is WorkloadKind.DATASET and config.target.api_key == "k"
    assert config.max_connections == 32
