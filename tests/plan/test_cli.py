"""`servewise profile` / `servewise plan` / `servewise plan validate` from the command line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from servewise.cli import main
from servewise.plan.machine import MachineInfo, model_fingerprint, this_machine
from servewise.plan.profile import Profile
from tests.plan.factories import make_cost, make_profile

WORKLOAD = ["--input-len", "16", "--output-len", "4", "--num-requests", "6", "--seeds", "1"]


@pytest.fixture
def model(tiny_dirs) -> str:
    return str(tiny_dirs["llama"])


def _profile(tmp_path: Path, model: str, **changes) -> str:
    profile = make_profile(fingerprint=model_fingerprint(model),
                           cost=make_cost(fixed_s=0.002, per_token_s=0.0001, per_sampled_s=0.0002))
    profile = dataclasses.replace(profile, **{"machine": this_machine(), **changes})
    path = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}.json"
    profile.save(path)
    return str(path)


def _plan(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["plan", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_a_plan_prints_every_figure_and_writes_its_files(tmp_path, capsys, model):
    out_dir = tmp_path / "out"
    status, out, err = _plan(capsys, "--profile", _profile(tmp_path, model), "--model", model, *WORKLOAD,
                             "--rates", "1,4", "--slo", "ttft=2s,tpot=150ms", "--grid", "max_num_seqs=2,8",
                             "--target-rate", "20", "--price-per-hour", "0.5", "--output-dir", str(out_dir))
    assert status == 0, err
    assert "TTFT p50/p90/p99 ms" in out and "highest rate meeting the SLO" in out and "replica(s) for 20 req/s" in out
    plan = json.loads((out_dir / "plan.json").read_text())
    assert len(plan["points"]) == 4 and plan["best"] in ("max_num_seqs=2", "max_num_seqs=8")
    for key in ("rate", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "goodput_rps", "attainment",
                "max_num_seqs", "max_num_batched_tokens", "replicas", "linear_backend", "threads", "admission"):
        assert all(key in p for p in plan["points"]), key
    assert {p.name for p in out_dir.iterdir()} == {"plan.json", "report.md", "pareto.png", "latency_vs_rate.png"}
    assert "Prediction intervals" in (out_dir / "report.md").read_text()


def test_profile_measures_steps_without_drafting(tmp_path, model, monkeypatch):
    """The step-cost model has no draft tokens, so the profiled engine must not draft (the server's default)."""
    import servewise.engine.llm_engine as llm_engine

    seen = []

    class Stop(Exception):
        pass

    def capture(config):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(llm_engine, "LLMEngine", capture)
    with pytest.raises(Stop):
        main(["profile", "--model", model, "--speculative-ngram", "4", "--output", str(tmp_path / "p.json")])
    assert seen and not seen[0].speculative.enabled


def test_a_plan_says_it_does_not_simulate_drafting(tmp_path, capsys, model):
    from servewise.plan_cli.run import SPECULATION_NOTE

    status, out, err = _plan(capsys, "--profile", _profile(tmp_path, model), "--model", model, *WORKLOAD,
                             "--rates", "1", "--output-dir", str(tmp_path / "out"))
    assert status == 0, err
    assert SPECULATION_NOTE in (tmp_path / "out" / "report.md").read_text()


def test_a_profile_of_another_model_is_refused(tmp_path, capsys, model, tiny_dirs):
    status, _, err = _plan(capsys, "--profile", _profile(tmp_path, str(tiny_dirs["qwen2"])), "--model", model,
                           *WORKLOAD, "--rates", "1")
    assert status == 2 and "another model" in err and "--allow-foreign-profile" in err
    assert err.count("\n") == 1


def test_a_profile_of_another_machine_is_refused_unless_allowed(tmp_path, capsys, model):
    other = MachineInfo("Some Other CPU", ("avx2",), 64, "2.13.0", "AVX2")
    path = _profile(tmp_path, model, machine=other)
    status, _, err = _plan(capsys, "--profile", path, "--model", model, *WORKLOAD, "--rates", "1")
    assert status == 2 and "another machine" in err and "'Some Other CPU'" in err
    status, out, _ = _plan(capsys, "--profile", path, "--model", model, *WORKLOAD, "--rates", "1",
                           "--allow-foreign-profile")
    assert status == 0 and "accepted with differences" in out


@pytest.mark.parametrize("argv, message", [
    (["--grid", "max_num_seqs="], "the grid would be empty"),
    (["--grid", "linear_backend=fp32"], "no profile for linear_backend=fp32"),
    (["--grid", "max_num_seqs=0"], "max_num_seqs must be in [1, 4096]"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, model, argv, message):
    status, _, err = _plan(capsys, "--profile", _profile(tmp_path, model), "--model", model, *WORKLOAD,
                           "--rates", "1", *argv)
    assert status == 2 and message in err and "Traceback" not in err


def test_an_unreadable_profile_is_exit_2(tmp_path, capsys, model):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    status, _, err = _plan(capsys, "--profile", str(bad), "--model", model, *WORKLOAD, "--rates", "1")
    assert status == 2 and "not a servewise profile" in err


def test_an_slo_no_point_meets_names_the_closest_point(tmp_path, capsys, model):
    status, _, err = _plan(capsys, "--profile", _profile(tmp_path, model), "--model", model, *WORKLOAD,
                           "--rates", "1,2", "--slo", "ttft=1ms", "--no-capacity")
    assert status == 2
    assert "no point meets the SLO (ttft≤1ms" in err and "the closest is base at rate=1/s" in err


@pytest.mark.slow
def test_profile_then_plan_then_validate_on_a_tiny_model(tmp_path, capsys, model):
    """End to end: profile (reduced grid), plan and validate at two low rates; loose bounds (the
    tiny model's steps take milliseconds, so HTTP dominates and a busy CI machine adds noise)."""
    profile = tmp_path / "profile.json"
    assert main(["profile", "--model", model, "--quick", "--output", str(profile), "--threads", "2",
                 "--max-num-batched-tokens", "64", "--max-num-seqs", "8", "--max-context", "256"]) == 0
    loaded = Profile.load(profile)
    assert loaded.fit.num_samples >= 20 and loaded.backend.threads == 2 and loaded.cost.forward_s(
        loaded.samples[0].shape) > 0
    # the serving calibration ran the real server: every quick-profile request made it into the fit
    assert loaded.serving is not None and loaded.serving.num_requests == 16 and loaded.serving.forward_scale > 0
    out_dir = tmp_path / "validation"
    status, out, err = _plan(capsys, "validate", "--profile", str(profile), "--model", model,
                             "--max-num-batched-tokens", "64", "--max-num-seqs", "8", "--input-len", "16",
                             "--output-len", "8", "--num-requests", "6", "--rates", "1,2", "--seeds", "1",
                             "--repeats", "1", "--slo", "ttft=5s,tpot=1s", "--output-dir", str(out_dir))
    assert status == 0, err
    assert "predicted / measured" in out
    validation = json.loads((out_dir / "validation.json").read_text())
    assert len(validation["points"]) == 2
    for point in validation["points"]:
        assert point["predicted_pass"] and point["measured_pass"]
        figures = {f["name"]: f for f in point["figures"]}
        assert abs(figures["throughput_rps"]["error"]) < 0.5  # set by the arrivals at these low rates
        assert abs(figures["output_tokens_per_s"]["error"]) < 0.5
        # the tiny model computes in milliseconds, HTTP and a busy machine add to it: a loose bound
        # that still catches a prediction off by a unit (×1000)
        for name in ("ttft_p50_s", "e2e_p50_s"):
            assert 0 < figures[name]["predicted"] < 5 * figures[name]["measured"], name
    [probe] = validation["speed_probes"]  # one per repeat: a lone stream, measured and planned
    assert probe["measured_tpot_s"] > 0 and probe["planned_tpot_s"] > 0 and "speed probe" in out
    [engine] = validation["engine"]  # the server's own counters over the sweep
    assert engine["measured"]["num_steps"] > 0 and engine["predicted"]["num_steps"] > 0
    assert (out_dir / "measured" / "base" / "run-1" / "results.json").is_file()
    assert (out_dir / "plan.json").is_file() and (out_dir / "validation.md").is_file()


def test_a_bench_run_is_replayed(tmp_path, capsys, model):
    from servewise.bench.client import TargetConfig
    from servewise.bench.config import BenchConfig
    from servewise.bench.distributions import parse_length
    from servewise.bench.metrics import summarize
    from servewise.bench.records import Outcome, RequestRecord
    from servewise.bench.results import BenchResult, PointResult
    from servewise.bench.schedule import LoadConfig, sweep
    from servewise.bench.slo import SloSpec
    from servewise.bench.workloads import WorkloadConfig

    load = LoadConfig(sweep(rates=[2.0, 4.0]), num_requests=4)
    config = BenchConfig(TargetConfig("http://x/v1"), load, WorkloadConfig(input_len=parse_length("16"),
                         output_len=parse_length("4")), SloSpec(ttft_s=2.0), tokenizer="auto")
    points = []
    for point in load.points:
        records = [RequestRecord(index=i, scheduled_s=0.2 * i, send_s=0.2 * i, outcome=Outcome.OK, ttft_s=0.05,
                                 e2e_s=0.1, num_output_tokens=2 + i) for i in range(4)]
        points.append(PointResult(point, 0.0, summarize(records, config.slo), records))
    results = tmp_path / "results.json"
    BenchResult(config.to_dict(), "tiny", "server", "2026-01-01T00:00:00+00:00", points).save(results)
    out_dir = tmp_path / "out"
    status, out, err = _plan(capsys, "--profile", _profile(tmp_path, model), "--model", model, "--from-bench",
                             str(results), "--seeds", "1", "--output-dir", str(out_dir))
    assert status == 0, err
    plan = json.loads((out_dir / "plan.json").read_text())
    assert [p["rate"] for p in plan["points"]] == [2.0, 4.0] and plan["slo"] == "ttft≤2s"
    assert "results.json" in plan["workload"] and "rate=2/s" in out


def test_validate_serves_each_configuration_with_the_servers_own_flags():
    from servewise.cli import build_parser
    from servewise.plan.knobs import Knobs
    from servewise.plan_cli.validate import serve_flags

    knobs = Knobs(max_num_seqs=12, max_num_batched_tokens=384, linear_backend="fp32", threads=1, admission=False,
                  queue_policy="priority", prefix_caching=False, block_size=32, num_kv_blocks=100, max_model_len=900)
    slo_class = "interactive:ttft=2s@p99,tpot=0.15s,slack=1"
    flags = serve_flags(knobs, "cpu", model_path="/models/m.gguf", slo_class_flag=slo_class)
    args = build_parser().parse_args(["serve", *flags])
    assert (args.max_num_seqs, args.max_num_batched_tokens, args.linear_backend, args.threads) == (12, 384, "fp32", 1)
    assert (args.admission, args.queue_policy, args.no_prefix_caching, args.block_size) == ("off", "priority", True, 32)
    assert (args.num_kv_blocks, args.max_model_len, args.model) == (100, 900, "/models/m.gguf")
    assert args.slo_class == [slo_class] and args.kv_cache_memory == knobs.kv_cache_memory_bytes
    assert args.speculative_ngram == 0  # the plan does not simulate drafting: validate serves without it
