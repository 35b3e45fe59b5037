"""The /metrics exposition: what the engine runs on, and what speculation does, are visible to the operator."""

from __future__ import annotations

from servewise.engine.stats import EngineStats
from servewise.server.metrics import ServerMetrics
from tests.server.conftest import metric_value


def test_cpu_kernel_build_is_an_info_metric():
    text = ServerMetrics("tiny", EngineStats, cpu_kernels="avx2").render().decode()
    assert 'servewise:cpu_kernel_info{isa="avx2",model_name="tiny"} 1.0' in text


def test_no_cpu_kernel_metric_on_a_gpu():
    assert "cpu_kernel_info" not in ServerMetrics("tiny", EngineStats).render().decode()


def test_speculative_decoding_series():
    stats = EngineStats()
    metrics = ServerMetrics("m", lambda: stats)
    text = metrics.render().decode()
    assert metric_value(text, "servewise:spec_decode_num_draft_tokens_total", model_name="m") == 0
    assert "servewise:spec_decode_draft_acceptance_rate" not in text  # no draft yet: no rate
    stats.record_draft(4, 3)
    stats.record_draft(2, 0)
    text = metrics.render().decode()
    assert metric_value(text, "servewise:spec_decode_num_drafts_total", model_name="m") == 2
    assert metric_value(text, "servewise:spec_decode_num_draft_tokens_total", model_name="m") == 6
    assert metric_value(text, "servewise:spec_decode_num_accepted_tokens_total", model_name="m") == 3
    assert metric_value(text, "servewise:spec_decode_draft_acceptance_rate", model_name="m") == 0.5
