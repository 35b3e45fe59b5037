import pytest

from servewise.errors import InvalidRequestError, PermissionDeniedError
from servewise.slo.spec import SLOClass, default_slo_config, resolve_class

from .factories import make_class, make_config


def test_default_config_has_interactive_before_batch():
    config = default_slo_config()
    assert config.class_names == ("interactive", "batch")
    assert config.default_class == "interactive"
    interactive, batch = config["interactive"], config["batch"]
    assert interactive.priority < batch.priority
    assert batch.admission_slack > interactive.admission_slack
    assert batch.ttft_s > interactive.ttft_s
    assert not config.allow_client_class


def test_is_met_checks_every_target_given():
    slo = make_class(ttft_s=1.0, tpot_s=0.1, e2e_s=10.0)
    assert slo.is_met(0.5, 0.05, 5.0)
    assert not slo.is_met(1.5, 0.05, 5.0)
    assert not slo.is_met(0.5, 0.2, 5.0)
    assert not slo.is_met(0.5, 0.05, 11.0)
    assert slo.is_met(0.5, None, 5.0)  # a one-token answer has no TPOT
    assert not slo.is_met(None, None, 2.0)  # no first token: the E2E latency stands in for TTFT


@pytest.mark.parametrize("kwargs, message", [
    ({"ttft_s": 0.0}, "ttft_s must be positive"),
    ({"ttft_percentile": 100.0}, "ttft_percentile"),
    ({"availability": 1.0}, "availability"),
    ({"admission_slack": 0.5}, "admission_slack"),
    ({"priority": 1.5}, "priority"),
    ({"name": "bad name"}, "name"),
])
def test_class_rejects_bad_values(kwargs, message):
    args = {"name": "c", "ttft_s": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        SLOClass(**args)


def test_config_rejects_duplicates_and_unknown_default():
    with pytest.raises(ValueError, match="unique"):
        make_config(make_class("a"), make_class("a"))
    from servewise.slo.spec import SLOConfig
    with pytest.raises(ValueError, match="default class 'zzz'"):
        SLOConfig(classes=(make_class("a"),), default_class="zzz")


def test_resolve_class_key_wins_unless_client_may_choose():
    strict = make_config()
    assert resolve_class(strict, None, None).name == "interactive"
    assert resolve_class(strict, "batch", None).name == "batch"
    assert resolve_class(strict, "batch", "interactive").name == "batch"  # request ignored
    assert resolve_class(strict, None, "batch").name == "interactive"
    loose = make_config(allow_client_class=True)
    assert resolve_class(loose, "interactive", "batch").name == "batch"  # a key may step down
    assert resolve_class(loose, None, "interactive").name == "interactive"
    with pytest.raises(PermissionDeniedError, match="'batch'.*may not ask for the more urgent 'interactive'"):
        resolve_class(loose, "batch", "interactive")  # ...never up
    assert resolve_class(loose, "interactive", None).name == "interactive"


def test_resolve_class_unknown_names():
    for config in (make_config(), make_config(allow_client_class=True)):
        with pytest.raises(InvalidRequestError, match="unknown SLO class 'gold'") as info:
            resolve_class(config, None, "gold")
        assert info.value.http_status == 400 and info.value.param == "priority"
    with pytest.raises(ValueError, match="API key names SLO class 'gold'"):
        resolve_class(make_config(), "gold", None)
