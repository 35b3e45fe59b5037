import pytest

from servewise.slo.files import ConfigError, parse_duration_s, parse_fraction
from servewise.slo.spec import SLOClass
from servewise.slo.spec_loading import load_slo_config, parse_slo_class, slo_config_from_flags

YAML = """
default_class: batch
allow_client_class: true
classes:
  interactive:
    ttft: 1s@p99
    tpot: 100ms
    e2e: 30s
    availability: 99.5%
    priority: 0
    slack: 1.5
  batch:
    ttft: 30
    ttft_percentile: p90
    availability: 0.99
    priority: 10
    slack: 4
    max_queue_wait: 10m
"""

TOML = """
default_class = "batch"
allow_client_class = true

[classes.interactive]
ttft = "1s@p99"
tpot = "100ms"
e2e = "30s"
availability = "99.5%"
priority = 0
slack = 1.5

[classes.batch]
ttft = 30
ttft_percentile = 90
availability = 0.99
priority = 10
slack = 4
max_queue_wait = "10m"
"""

EXPECTED_INTERACTIVE = SLOClass(name="interactive", ttft_s=1.0, ttft_percentile=99.0, tpot_s=0.1, e2e_s=30.0,
                                availability=0.995, priority=0, admission_slack=1.5)
EXPECTED_BATCH = SLOClass(name="batch", ttft_s=30.0, ttft_percentile=90.0, availability=0.99, priority=10,
                          admission_slack=4.0, max_queue_wait_s=600.0)


@pytest.mark.parametrize("suffix, text", [(".yaml", YAML), (".toml", TOML)])
def test_load_yaml_and_toml(tmp_path, suffix, text):
    path = tmp_path / f"slo{suffix}"
    path.write_text(text)
    config = load_slo_config(path)
    assert config.classes == (EXPECTED_INTERACTIVE, EXPECTED_BATCH)
    assert config.default_class == "batch"
    assert config.allow_client_class


def test_load_accepts_slo_wrapper_and_json(tmp_path):
    path = tmp_path / "slo.json"
    path.write_text('{"slo": {"classes": {"only": {"ttft": "2s"}}}}')
    config = load_slo_config(path)
    assert config.default_class == "only"
    assert config["only"].ttft_s == 2.0 and config["only"].ttft_percentile == 99.0


@pytest.mark.parametrize("body, key, problem", [
    ("classes:\n  a: {ttft: fast}\n", "classes.a.ttft", "expected a duration"),
    ("classes:\n  a: {ttft: 1s, latency: 2s}\n", "classes.a.latency", "unknown key"),
    ("classes:\n  a: {ttft: 1s, availability: 99.5}\n", "classes.a.availability", "percentage"),
    ("classes:\n  a: {ttft: 1s@p99, ttft_percentile: 90}\n", "classes.a.ttft", "percentile given twice"),
    ("classes:\n  a: {ttft: 1s, slack: 0.5}\n", "classes.a", "admission_slack must be ≥ 1"),
    ("classes:\n  a: {ttft: 1s, priority: high}\n", "classes.a.priority", "expected a number"),
    ("classes:\n  a: {ttft: -1s}\n", "classes.a.ttft", "expected a duration"),
    ("classes: {}\n", "classes", "empty"),
    ("default_class: a\n", "classes", "missing"),
    ("classes:\n  a: {ttft: 1s}\ndefault_class: b\n", "default_class", "'b' is not one of"),
    ("classes:\n  a: {ttft: 1s}\nallow_client_class: maybe\n", "allow_client_class", "true or false"),
    ("classes:\n  a: [1, 2]\n", "classes.a", "expected a table"),
    ("classes: [\n", "(file)", "not valid YAML"),
    ("- 1\n", "(top level)", "expected a table"),
    ("clases:\n  a: {ttft: 1s}\n", "clases", "unknown key"),
])
def test_bad_files_name_file_key_and_problem(tmp_path, body, key, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_slo_config(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.source == str(path) and err.key == key and problem in err.problem
    assert str(path) in str(err) and key in str(err)


def test_bad_toml_and_missing_file_and_unknown_suffix(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("classes = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_slo_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_slo_config(tmp_path / "missing.yaml")
    other = tmp_path / "slo.ini"
    other.write_text("")
    with pytest.raises(ConfigError, match="unknown format"):
        load_slo_config(other)


def test_parse_flag():
    slo = parse_slo_class("interactive:ttft=1s@p99,tpot=100ms,e2e=30s,availability=99.5%,priority=0,slack=1.5")
    assert slo == EXPECTED_INTERACTIVE
    assert parse_slo_class("bulk: ttft = 1m@p50 , max_queue_wait=30s").max_queue_wait_s == 30.0
    assert parse_slo_class("bulk:ttft=1m@p50").ttft_percentile == 50.0


@pytest.mark.parametrize("text, key", [
    ("ttft=1s", "(name)"),
    ("a:ttft", "ttft"),
    ("a:ttft=1s,ttft=2s", "ttft"),
    ("a:ttft=1s,colour=red", "colour"),
    ("a:ttft=1s@p100", "a"),
    ("a:tpot=1", "tpot"),  # flags are strings: "1" has no unit
])
def test_parse_flag_rejects_bad_input(text, key):
    with pytest.raises(ConfigError) as info:
        parse_slo_class(text)
    assert info.value.key == key and "--slo-class" in str(info.value)


def test_config_from_flags():
    config = slo_config_from_flags(["a:ttft=1s", "b:ttft=10s,priority=5"])
    assert config.class_names == ("a", "b") and config.default_class == "a"
    assert slo_config_from_flags(["a:ttft=1s", "b:ttft=10s"], default_class="b").default_class == "b"
    with pytest.raises(ValueError):
        slo_config_from_flags([])


def test_value_parsers():
    assert parse_duration_s("250ms") == pytest.approx(0.25)
    assert parse_duration_s("2h") == 7200.0
    assert parse_duration_s(1.5) == 1.5
    assert parse_fraction("99.9%") == pytest.approx(0.999)
    with pytest.raises(ValueError):
        parse_fraction("100%")
    with pytest.raises(ValueError):
        parse_duration_s(True)
