"""The /metrics exposition: what the engine runs on is visible to the operator."""

from __future__ import annotations

from servewise.engine.stats import EngineStats
from servewise.server.metrics import ServerMetrics


def test_cpu_kernel_build_is_an_info_metric():
    text = ServerMetrics("tiny", EngineStats, cpu_kernels="avx2").render().decode()
    assert 'servewise:cpu_kernel_info{isa="avx2",model_name="tiny"} 1.0' in text


def test_no_cpu_kernel_metric_on_a_gpu():
    assert "cpu_kernel_info" not in ServerMetrics("tiny", EngineStats).render().decode()
