import json

import pytest

from servewise.bench.results import SCHEMA_VERSION, BenchResult
from servewise.bench.schedule import sweep
from servewise.bench.slo import SloSpec

from .factories import make_config, run_with_server, scripted_config, scripted_dataset


def test_results_json_round_trip(tmp_path):
    dataset = scripted_dataset(tmp_path, [{}, {"status": 429, "retry_after": "3"}, {"drop_after_tokens": 1}])
    result, _ = run_with_server(lambda url: scripted_config(url, dataset, 3, slo=SloSpec(ttft_s=1.0),
                                                            target={"api_key": "sk-secret"}))
    path = tmp_path / "results.json"
    result.save(path)
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and raw["tool"] == "servewise-bench"
    assert "sk-secret" not in path.read_text()
    record = raw["points"][0]["records"][0]
    assert {"send_s", "ttft_s", "token_times_s", "num_output_tokens", "http_status", "outcome", "error"} <= set(record)
    loaded = BenchResult.load(path)
    assert loaded.to_dict() == raw
    assert loaded.points[0].summary == result.points[0].summary
    assert loaded.slo == SloSpec(ttft_s=1.0)
    assert [r.outcome for r in loaded.points[0].records] == [r.outcome for r in result.points[0].records]


def test_unknown_schema_versions_are_refused(tmp_path):
    result, _ = run_with_server(lambda url: make_config(url, points=sweep(concurrencies=[1]),
                                                        load={"num_requests": 1}))
    data = result.to_dict()
    for version in (SCHEMA_VERSION + 1, None, "1"):
        data["schema_version"] = version
        with pytest.raises(ValueError, match="schema_version"):
            BenchResult.from_dict(data)
    (tmp_path / "x.json").write_text("not json")
    with pytest.raises(ValueError):
        BenchResult.load(tmp_path / "x.json")
