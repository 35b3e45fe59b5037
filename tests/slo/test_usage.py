import json

import pytest

from servewise.slo.usage import RequestUsage, UsageConfig, UsageMeter


def usage(prompt=100, cached=0, completion=50, prefill_s=1.0, decode_s=2.0) -> RequestUsage:
    return RequestUsage(prompt_tokens=prompt, cached_prompt_tokens=cached, completion_tokens=completion,
                        prefill_compute_s=prefill_s, decode_compute_s=decode_s)


def test_sums_and_cost():
    meter = UsageMeter(UsageConfig(price_per_device_hour_dollars=3.6))  # $0.001 per device-second
    meter.record("alice", usage())
    meter.record("alice", usage(prompt=300, cached=200, completion=550, prefill_s=0.5, decode_s=8.5))
    meter.record("bob", usage(prompt=1000, completion=0, prefill_s=4.0, decode_s=0.0))
    alice = meter.usage("alice")
    assert (alice.num_requests, alice.prompt_tokens, alice.cached_prompt_tokens, alice.completion_tokens) == \
        (2, 400, 200, 600)
    assert (alice.prefill_device_s, alice.decode_device_s, alice.device_s) == (1.5, 10.5, 12.0)
    assert meter.cost_dollars(alice) == pytest.approx(0.012)
    assert meter.dollars_per_million_tokens(alice) == pytest.approx(0.012 / 1000 * 1e6)  # $12 per 1M

    snap = json.loads(json.dumps(meter.snapshot()))
    assert list(snap["tenants"]) == ["alice", "bob"]
    assert snap["tenants"]["bob"]["cost_dollars"] == pytest.approx(0.004)
    assert snap["total"]["num_requests"] == 3 and snap["total"]["total_tokens"] == 2000
    assert snap["total"]["cost_dollars"] == pytest.approx(0.016)
    assert snap["total"]["dollars_per_million_tokens"] == pytest.approx(8.0)


def test_without_price_no_cost():
    meter = UsageMeter()
    meter.record("alice", usage())
    snap = meter.snapshot()
    assert snap["tenants"]["alice"]["cost_dollars"] is None
    assert snap["tenants"]["alice"]["dollars_per_million_tokens"] is None
    assert not any(s.name == "servewise:tenant_cost_dollars_total" for s in meter.metric_samples())
    assert meter.dollars_per_million_tokens(meter.usage("nobody")) is None


def test_metric_samples_are_counters_with_tenant_label():
    meter = UsageMeter(UsageConfig(price_per_device_hour_dollars=3.6))
    meter.record("alice", usage())
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in meter.metric_samples()}
    assert samples[("servewise:tenant_cost_dollars_total", (("tenant", "alice"),))] == pytest.approx(0.003)
    assert samples[("servewise:tenant_prompt_tokens_total", (("tenant", "alice"),))] == 100
    assert samples[("servewise:tenant_completion_tokens_total", (("tenant", "alice"),))] == 50
    assert samples[("servewise:tenant_device_seconds_total", (("phase", "decode"), ("tenant", "alice")))] == 2.0
    assert all(s.is_counter for s in meter.metric_samples())


@pytest.mark.parametrize("kwargs", [{"cached": 101}, {"prompt": -1}, {"decode_s": -0.1}])
def test_bad_usage_rejected(kwargs):
    with pytest.raises(ValueError):
        usage(**kwargs)


def test_bad_price_rejected():
    with pytest.raises(ValueError):
        UsageConfig(price_per_device_hour_dollars=-1.0)
