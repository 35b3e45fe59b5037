"""Routing scores, pure: prefix affinity, its limit under load, staleness correction, random ties."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from servewise.errors import OverloadedError
from servewise.fleet.router_core import FleetRouter, RouterConfig
from servewise.fleet.routing import RouteReason
from servewise.slo import AdmissionMode, SLOClass
from tests.fleet.factories import route, stats, tokens

INTERACTIVE = SLOClass("interactive", ttft_s=1.0, admission_slack=1.5)


def router(*replicas, seed: int = 0, **config) -> FleetRouter:
    r = FleetRouter(RouterConfig(**config), rng=random.Random(seed))
    r.update_stats(replicas)
    return r


def test_a_shared_prefix_goes_back_to_the_replica_that_holds_it():
    r = router(stats("a"), stats("b"))
    first = route("g0-0", tokens(1000, 1100, group=0))
    order, _ = r.choose(first, ["a", "b"])
    r.on_routed(first, order[0], RouteReason.TIE)
    r.on_first_token("g0-0", 0.5, 0)
    for i in range(1, 6):
        follower = route(f"g0-{i}", tokens(1000, 1100 + i, group=0))
        order, reason = r.choose(follower, ["a", "b"])
        assert order[0] == first_choice(r, "g0-0") and reason is RouteReason.PREFIX
        ranked = r.rank(follower)
        assert ranked[0].num_cached_tokens == 1000 // 16 * 16 and ranked[1].num_cached_tokens == 0
        r.on_routed(follower, order[0], reason)
        r.on_first_token(follower.key, 0.1, 992)


def first_choice(r: FleetRouter, key: str) -> str:
    return r._in_flight[key].replica_id


def test_the_affine_replica_loses_once_its_queue_outweighs_the_prefill_it_saves():
    prompt = tokens(1000, 1100)
    warm = route("warm", prompt)
    # 1000 cached tokens save ~1 s of prefill at 1 ms/token; a 2,000-token queue costs ~2 s more.
    r = router(stats("affine", queued=2000), stats("cold"))
    r._replicas["affine"].memory.add(warm.block_hashes)
    ranked = r.rank(route("next", tokens(1000, 1150)))
    assert [s.replica_id for s in ranked] == ["cold", "affine"]
    assert ranked[1].num_cached_tokens > 0 and ranked[0].ttft_s < ranked[1].ttft_s
    # With a short queue the prefix wins again.
    r.update_stats([stats("affine", queued=200), stats("cold")])
    assert r.rank(route("next", tokens(1000, 1150)))[0].replica_id == "affine"


def test_stale_publications_are_corrected_both_ways():
    r = router(stats("a"), stats("b"))
    burst = [route(f"r{i}", tokens(0, 400, group=i + 10)) for i in range(6)]
    picked = Counter()
    for req in burst:  # the stats never change in between: only the correction spreads the burst
        order, _ = r.choose(req, ["a", "b"])
        r.on_routed(req, order[0], RouteReason.LOAD)
        picked[order[0]] += 1
    assert picked == {"a": 3, "b": 3}
    a_keys = [k for k, f in r._in_flight.items() if f.replica_id == "a"]

    def queued_ahead() -> int:
        return r.rank(route("probe", tokens(0, 100, group=99)), ["a"])[0].prediction.num_prefill_tokens_ahead

    assert queued_ahead() == 3 * 400  # all three unseen
    # "a" publishes: it holds two of them queued; the third had not arrived yet.
    r.update_stats([stats("a", queued=800, pending={a_keys[0]: 400, a_keys[1]: 400}), stats("b")])
    assert queued_ahead() == 800 + 400
    r.on_first_token(a_keys[2], 0.3, 0)  # past its first token, the unseen one counts nowhere
    assert queued_ahead() == 800
    # The stale publication still lists the other two, which this router has since seen start or end.
    r.on_first_token(a_keys[0], 0.3, 0)
    assert queued_ahead() == 400
    r.on_finished(a_keys[1])
    assert queued_ahead() == 0


def test_ties_are_broken_at_random():
    firsts = Counter()
    for seed in range(200):
        r = router(stats("a"), stats("b"), stats("c"), seed=seed)
        order, reason = r.choose(route("x", tokens(0, 50)), ["a", "b", "c"])
        assert reason is RouteReason.TIE
        firsts[order[0]] += 1
    assert set(firsts) == {"a", "b", "c"} and min(firsts.values()) > 40


def test_excluded_and_draining_replicas_are_not_chosen():
    r = router(stats("a"), stats("b", accepting=False), stats("c"))
    order, reason = r.choose(route("x", tokens(0, 50), exclude=["a"]), ["a", "b", "c"])
    assert order[0] == "c" and "a" not in order and reason is RouteReason.RETRY


def test_no_stats_yet_spreads_at_random_over_the_candidates():
    r = FleetRouter(rng=random.Random(1))
    seen = {r.choose(route(f"x{i}", tokens(0, 50)), ["a", "b"])[0][0] for i in range(20)}
    assert seen == {"a", "b"}
    assert r.admit(route("y", tokens(0, 50)), INTERACTIVE) is None  # nothing to predict with: admit


def test_priority_queues_count_only_classes_at_least_as_urgent():
    r = router(stats("a", queued_by_priority={0: 100, 10: 5000}))
    urgent = r.rank(route("u", tokens(0, 10), priority=0))[0]
    batch = r.rank(route("b", tokens(0, 10), priority=10))[0]
    assert urgent.prediction.num_prefill_tokens_ahead == 100
    assert batch.prediction.num_prefill_tokens_ahead == 5100


def test_the_fleet_sheds_only_when_even_the_best_replica_would_miss():
    r = router(stats("a", queued=3000), stats("b", queued=1000))
    best = r.admit(route("ok", tokens(0, 100)), INTERACTIVE)  # b: ~1.1 s + overheads < 1.5 s
    assert best is not None and best.replica_id == "b"
    r.update_stats([stats("a", queued=3000), stats("b", queued=2500)])
    with pytest.raises(OverloadedError) as err:
        r.admit(route("late", tokens(0, 100)), INTERACTIVE)
    assert err.value.retry_after_s >= 2.5 and "fleet overloaded" in err.value.message
    assert r.num_shed == 1
    # An idle replica never sheds, however long the prompt: waiting would not help it.
    r.update_stats([stats("a")])
    assert r.admit(route("huge", tokens(0, 4000)), INTERACTIVE) is not None
    observe = router(stats("a", queued=3000), admission_mode=AdmissionMode.OBSERVE)
    assert observe.admit(route("x", tokens(0, 100)), INTERACTIVE) is not None and observe.num_would_shed == 1


def test_prefix_memory_is_bounded_by_the_replicas_kv_pool():
    r = router(stats("a", kv_blocks=100))
    r.on_routed(route("one", tokens(1600, 1600, group=1)), "a", RouteReason.LOAD)  # 100 blocks
    assert r.rank(route("again", tokens(1600, 1700, group=1)))[0].num_cached_tokens == 1600
    r.on_routed(route("two", tokens(800, 800, group=2)), "a", RouteReason.LOAD)  # evicts the oldest half
    assert r.rank(route("again", tokens(1600, 1700, group=1)))[0].num_cached_tokens == 0


def test_metrics_name_each_replica_and_reason_and_score_the_predictions():
    r = router(stats("a"), stats("b"))
    req = route("k", tokens(0, 300))
    r.on_routed(req, "a", RouteReason.LOAD)
    r.on_first_token("k", 0.9, 0)
    r.on_finished("k")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in r.metric_samples()}
    assert samples[("servewise:router_requests_total", (("reason", "least_ttft"), ("replica", "a")))] == 1
    assert ("servewise:router_predicted_ttft_error_seconds", (("stat", "mean_abs"),)) in samples
    assert samples[("servewise:router_prefix_hit_ratio", (("kind", "actual"),))] == 0.0
    assert r.snapshot()["decisions"]["routed"] == 1 and not r._in_flight
