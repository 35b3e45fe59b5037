import pytest

from servewise.bench.records import Outcome
from servewise.bench.slo import SloSpec, parse_duration_s, parse_slo

from .factories import make_record


def test_parse_slo_with_units():
    slo = parse_slo("ttft=1s, tpot=100ms,e2e=2.5s,itl=50ms")
    assert slo == SloSpec(ttft_s=1.0, tpot_s=0.1, e2e_s=2.5, itl_s=0.05)
    assert parse_slo("").is_empty
    assert slo.describe() == "ttft≤1s, tpot≤100ms, e2e≤2.5s, itl≤50ms"


@pytest.mark.parametrize("text", ["ttft=1", "ttft=fast", "latency=1s", "ttft", "ttft=-1s", "ttft=0ms"])
def test_parse_slo_rejects_bad_input(text):
    with pytest.raises(ValueError):
        parse_slo(text)


def test_parse_duration():
    assert parse_duration_s("250ms") == pytest.approx(0.25)
    assert parse_duration_s("1e-1s") == pytest.approx(0.1)


def test_met_by_checks_every_target_and_success():
    slo = SloSpec(ttft_s=0.2, tpot_s=0.03, itl_s=0.05)
    assert slo.met_by(make_record(ttft_s=0.1, token_gaps_s=(0.02, 0.02)))
    assert not slo.met_by(make_record(ttft_s=0.3))
    assert not slo.met_by(make_record(ttft_s=0.1, token_gaps_s=(0.04, 0.04)))  # tpot 40 ms
    assert not slo.met_by(make_record(ttft_s=0.1, token_gaps_s=(0.001, 0.06)))  # one 60 ms gap, tpot fine
    assert not slo.met_by(make_record(outcome=Outcome.SHED, ttft_s=None))
    assert SloSpec().met_by(make_record())
