"""--check-overload: Retry-After on shed answers, lost accepted requests, 5xx."""

from servewise.bench.overload import check_overload

from .factories import run_with_server, scripted_config, scripted_dataset


def run_script(tmp_path, script, **kwargs):
    dataset = scripted_dataset(tmp_path, script)
    result, _ = run_with_server(lambda url: scripted_config(url, dataset, len(script), **kwargs))
    return check_overload(result)


def test_graceful_shedding_passes(tmp_path):
    report = run_script(tmp_path, [{}, {}, {"status": 429, "retry_after": "1"}, {"status": 503, "retry_after": "2"}])
    assert report.passed
    assert (report.num_shed, report.num_shed_with_retry_after, report.num_lost, report.num_5xx) == (2, 2, 0, 0)
    assert report.lines()[0] == "PASS: 4 requests"


def test_shed_without_retry_after_fails(tmp_path):
    report = run_script(tmp_path, [{"status": 429, "retry_after": "1"}, {"status": 429}, {"status": 503}])
    assert not report.passed and report.num_shed_without_retry_after == 2
    assert any("PROBLEM" in line and "2 without" in line for line in report.lines())


def test_lost_requests_and_5xx_are_reported(tmp_path):
    report = run_script(tmp_path, [{}, {"drop_after_tokens": 3}, {"omit_done": True}, {"error_after_tokens": 1},
                                   {"ttft_s": 2.0}, {"status": 500}, {"status": 502}],
                        target={"request_timeout_s": 0.4})
    assert not report.passed
    assert report.num_accepted == 5 and report.num_lost == 4 and report.num_5xx == 2
    assert sorted(e.split(": ")[1] for e in report.lost_examples) == [
        "connection_error", "incomplete", "stream_error", "timeout"]
