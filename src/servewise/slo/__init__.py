"""SLO logic: specs, attainment tracking, predictive admission, tenants, rate limits, usage.

Pure logic with an injectable clock; the server wires it into HTTP and Prometheus.
It knows timings and SLO specs, never engine internals.
"""

from servewise.slo.admission import (
    AdmissionConfig,
    AdmissionController,
    AdmissionDecision,
    AdmissionMode,
    QueueOrder,
    ShedReason,
    TTFTPrediction,
)
from servewise.slo.cost_model import CostModelConfig, StepCost, StepCostModel, StepTiming
from servewise.slo.files import ConfigError
from servewise.slo.prediction_error import PredictionErrorStats, PredictionErrorSummary
from servewise.slo.rate_limit import Lease, RateLimiter
from servewise.slo.samples import MetricSample
from servewise.slo.spec import SLOClass, SLOConfig, default_slo_config, resolve_class
from servewise.slo.spec_loading import load_slo_config, parse_slo_class, slo_config_from_flags
from servewise.slo.tenants import ApiKeyStore, Tenant, TenantLimits, load_api_keys, parse_api_keys
from servewise.slo.tracker import Outcome, SLOTracker, TrackerConfig, WindowStats
from servewise.slo.usage import RequestUsage, UsageConfig, UsageMeter
from servewise.slo.windows import WindowSpec

__all__ = [
    "AdmissionConfig", "AdmissionController", "AdmissionDecision", "AdmissionMode", "ApiKeyStore",
    "ConfigError", "CostModelConfig", "Lease", "MetricSample", "Outcome", "PredictionErrorStats",
    "PredictionErrorSummary", "QueueOrder", "RateLimiter", "RequestUsage", "SLOClass", "SLOConfig",
    "SLOTracker", "ShedReason", "StepCost", "StepCostModel", "StepTiming", "TTFTPrediction", "Tenant",
    "TenantLimits", "TrackerConfig", "UsageConfig", "UsageMeter", "WindowSpec", "WindowStats",
    "default_slo_config", "load_api_keys", "load_slo_config", "parse_api_keys", "parse_slo_class",
    "resolve_class", "slo_config_from_flags",
]
