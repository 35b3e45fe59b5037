"""Metric samples the SLO components hand to the server's Prometheus collector.

The slo layer does not import prometheus_client: it yields plain samples, and the
server turns them into metric families at scrape time. A name ending in ``_total``
is a counter (prometheus_client's CounterMetricFamily takes it with or without the
suffix); any other name is a gauge.
"""

from __future__ import annotations

from typing import NamedTuple

PREFIX = "servewise:"  # the server's metric prefix (server/metrics.py)


class MetricSample(NamedTuple):
    name: str  # full exposed name, e.g. "servewise:slo_attainment_ratio"
    labels: dict[str, str]  # label name → value
    value: float

    @property
    def is_counter(self) -> bool:
        return self.name.endswith("_total")
