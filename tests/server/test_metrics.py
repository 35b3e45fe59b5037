from prometheus_client import generate_latest

from servewise.engine.stats import EngineStats
from servewise.server.metrics import ServerMetrics
from tests.server.conftest import metric_value


def test_speculative_decoding_series():
    stats = EngineStats()
    metrics = ServerMetrics("m", lambda: stats)
    text = generate_latest(metrics.registry).decode()
    assert metric_value(text, "servewise:spec_decode_num_draft_tokens_total", model_name="m") == 0
    assert "servewise:spec_decode_draft_acceptance_rate" not in text  # no draft yet: no rate
    stats.record_draft(4, 3)
    stats.record_draft(2, 0)
    text = generate_latest(metrics.registry).decode()
    assert metric_value(text, "servewise:spec_decode_num_drafts_total", model_name="m") == 2
    assert metric_value(text, "servewise:spec_decode_num_draft_tokens_total", model_name="m") == 6
    assert metric_value(text, "servewise:spec_decode_num_accepted_tokens_total", model_name="m") == 3
    assert metric_value(text, "servewise:spec_decode_draft_acceptance_rate", model_name="m") == 0.5
