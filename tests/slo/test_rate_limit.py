import pytest

from servewise.errors import InvalidRequestError, RateLimitError
from servewise.slo.rate_limit import RateLimiter
from servewise.slo.tenants import Tenant, TenantLimits

from .factories import FakeClock


def tenant(name: str = "alice", **limits) -> Tenant:
    return Tenant(name=name, limits=TenantLimits(**limits))


@pytest.fixture
def clock():
    return FakeClock()


def test_request_n_plus_one_is_limited_then_refills(clock):
    limiter = RateLimiter(clock)
    alice = tenant(requests_per_minute=3)
    for _ in range(3):
        limiter.release(limiter.acquire(alice, 10))
    with pytest.raises(RateLimitError) as info:
        limiter.acquire(alice, 10)
    err = info.value
    assert err.limit == "requests_per_minute" and err.http_status == 429
    assert "requests_per_minute = 3" in err.message and "alice" in err.message
    assert err.retry_after_s == pytest.approx(20.0, abs=1.0)  # one request refills every 60/3 s
    clock.advance(err.retry_after_s - 1.0)
    with pytest.raises(RateLimitError):
        limiter.acquire(alice, 10)
    clock.advance(1.0)
    limiter.acquire(alice, 10)


def test_tokens_per_minute_reserve_and_settle(clock):
    limiter = RateLimiter(clock)
    alice = tenant(tokens_per_minute=1000)
    first = limiter.acquire(alice, 600)  # prompt + max_tokens
    with pytest.raises(RateLimitError) as info:
        limiter.acquire(alice, 600)
    assert info.value.limit == "tokens_per_minute"
    assert info.value.retry_after_s == pytest.approx(200 / (1000 / 60), abs=1.0)  # 12 s for 200 tokens
    limiter.release(first, used_tokens=100)  # 500 reserved tokens come back
    limiter.acquire(alice, 600)


def test_overrun_is_charged(clock):
    limiter = RateLimiter(clock)
    alice = tenant(tokens_per_minute=1000)
    limiter.release(limiter.acquire(alice, 100), used_tokens=1100)  # 1000 more than reserved
    with pytest.raises(RateLimitError) as info:
        limiter.acquire(alice, 1)
    assert info.value.retry_after_s == pytest.approx(101 / (1000 / 60), abs=1.0)


def test_request_larger_than_the_whole_budget_is_invalid(clock):
    with pytest.raises(InvalidRequestError, match="lower max_tokens") as info:
        RateLimiter(clock).acquire(tenant(tokens_per_minute=1000), 1001)
    assert info.value.param == "max_tokens"


def test_concurrency_lease_released(clock):
    limiter = RateLimiter(clock)
    alice = tenant(concurrent_requests=2)
    a, _ = limiter.acquire(alice, 1), limiter.acquire(alice, 1)
    with pytest.raises(RateLimitError) as info:
        limiter.acquire(alice, 1)
    assert info.value.limit == "concurrent_requests" and info.value.retry_after_s == 1.0
    limiter.release(a)
    limiter.release(a)  # idempotent: no second slot freed
    assert limiter.num_in_flight("alice") == 1
    limiter.acquire(alice, 1)
    with pytest.raises(RateLimitError):
        limiter.acquire(alice, 1)


def test_all_or_nothing_and_longest_wait_reported(clock):
    limiter = RateLimiter(clock)
    alice = tenant(requests_per_minute=60, tokens_per_minute=600)
    limiter.acquire(alice, 600)
    with pytest.raises(RateLimitError) as info:
        limiter.acquire(alice, 300)
    assert info.value.limit == "tokens_per_minute"  # 30 s for tokens beats 1 s for a request
    assert info.value.retry_after_s == pytest.approx(30.0, abs=1.0)
    clock.advance(30.0)
    limiter.acquire(alice, 300)  # the failed try took no request slot and no tokens


def test_other_tenants_unaffected(clock):
    limiter = RateLimiter(clock)
    alice, bob = tenant("alice", requests_per_minute=1, concurrent_requests=1), tenant("bob", requests_per_minute=1)
    limiter.acquire(alice, 1)
    with pytest.raises(RateLimitError):
        limiter.acquire(alice, 1)
    limiter.acquire(bob, 1)
    unlimited = tenant("carol")
    for _ in range(1000):
        limiter.acquire(unlimited, 10**6)


def test_reloaded_limits_take_effect(clock):
    limiter = RateLimiter(clock)
    limiter.acquire(tenant(requests_per_minute=1), 1)
    with pytest.raises(RateLimitError):
        limiter.acquire(tenant(requests_per_minute=1), 1)  # the old limit is spent
    limiter.acquire(tenant(requests_per_minute=2), 1)  # new limits: a fresh bucket of 2
    limiter.acquire(tenant(requests_per_minute=2), 1)
    with pytest.raises(RateLimitError):
        limiter.acquire(tenant(requests_per_minute=2), 1)
