from servewise.bench.records import Outcome, RequestRecord, outcome_for_status

from .factories import make_record


def test_status_outcomes():
    assert [outcome_for_status(s) for s in (429, 503, 400, 404, 500, 502)] == [
        Outcome.SHED, Outcome.SHED, Outcome.CLIENT_ERROR, Outcome.CLIENT_ERROR, Outcome.SERVER_ERROR,
        Outcome.SERVER_ERROR]


def test_accepted_and_lost():
    assert make_record().accepted and not make_record().lost
    cut = make_record(outcome=Outcome.CONNECTION_ERROR, http_status=200)
    assert cut.accepted and cut.lost
    refused = make_record(outcome=Outcome.CONNECTION_ERROR)
    assert not refused.accepted and not refused.lost


def test_dict_round_trip_rounds_times_to_microseconds():
    record = make_record(3, send_s=1.23456789, ttft_s=0.1111111, kind="long", retry_after="2")
    data = record.to_dict()
    assert data["send_s"] == 1.234568 and data["token_times_s"][0] == 0.111111
    assert RequestRecord.from_dict(data).to_dict() == data
