"""Replicas > 1: the fleet's own scoring picks the replica, ties go at random, the fleet sheds."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

from servewise.bench.records import Outcome
from servewise.config import SchedulerConfig
from servewise.engine.kv_cache_manager import KVCacheManager
from servewise.plan.routing import rank_replicas
from servewise.plan.simulator import FleetSimulator
from servewise.slo import AdmissionConfig, AdmissionController, SLOClass
from tests.engine.utils import create_request
from tests.plan.factories import fixed_workload, make_cost, make_spec, open_loop, slo_class

PROMPT = list(range(1, 321))  # 20 blocks of 16


@dataclass
class FakeReplica:
    index: int
    admission: AdmissionController
    kv: KVCacheManager
    scheduler_config: SchedulerConfig
    published_running: int = 0
    published_waiting: int = 0


def replica(index: int, *, cached: list[int] | None = None, queued_tokens: int = 0) -> FakeReplica:
    config = SchedulerConfig(max_num_batched_tokens=256)
    kv = KVCacheManager(256, 16, True)
    if cached:  # leave this prompt's blocks in the prefix cache, as a finished request does
        request = create_request(cached)
        kv.allocate(request, len(cached))
        request.num_computed_tokens = len(cached)
        kv.cache_full_blocks(request)
        kv.free(request)
    admission = AdmissionController(AdmissionConfig.for_scheduler(config))
    if queued_tokens:
        admission.on_admitted("queued", queued_tokens, slo_class())
    return FakeReplica(index, admission, kv, config)


def test_the_replica_holding_the_prefix_wins_until_its_queue_outweighs_it():
    order, shed = rank_replicas([replica(0), replica(1, cached=PROMPT)], PROMPT, slo_class(), random.Random(0))
    assert order == [1, 0] and shed is None
    busy = replica(1, cached=PROMPT, queued_tokens=4000)
    order, _ = rank_replicas([replica(0), busy], PROMPT, slo_class(), random.Random(0))
    assert order == [0, 1]


def test_ties_are_broken_at_random_and_a_seed_fixes_them():
    firsts = {rank_replicas([replica(0), replica(1)], PROMPT, slo_class(), random.Random(s))[0][0] for s in range(20)}
    assert firsts == {0, 1}
    assert rank_replicas([replica(0), replica(1)], PROMPT, slo_class(), random.Random(4)) == \
        rank_replicas([replica(0), replica(1)], PROMPT, slo_class(), random.Random(4))


def test_the_fleet_sheds_when_even_the_best_replica_misses_the_target():
    tight = SLOClass(name="interactive", ttft_s=0.05)
    _, shed = rank_replicas([replica(0, queued_tokens=5000), replica(1, queued_tokens=6000)], PROMPT, tight,
                            random.Random(0))
    assert shed is not None and "fleet overloaded" in shed


def test_routing_follows_the_fleets_scoring(monkeypatch):
    import servewise.fleet.routing as fleet_routing

    original = fleet_routing.predict_ttft

    def prefer_the_busiest(*args, **kwargs):
        prediction = original(*args, **kwargs)
        return type(prediction)(1.0 / (1.0 + prediction.ttft_s), prediction.queue_wait_s,
                                prediction.num_prefill_tokens_ahead, prediction.num_steps)

    monkeypatch.setattr(fleet_routing, "predict_ttft", prefer_the_busiest)
    order, _ = rank_replicas([replica(0), replica(1, queued_tokens=4000)], PROMPT, slo_class(), random.Random(0))
    assert order == [1, 0]


def test_two_replicas_serve_what_overloads_one_and_keep_prefix_affinity():
    load, point = open_loop(14.0, 200)
    workload = fixed_workload(load, point, prompt_len=512, output_len=8, shared_prefix=0)
    cost = make_cost(fixed_s=0.01, per_token_s=0.0002, per_sampled_s=0.001)
    results = {n: FleetSimulator(make_spec(), cost, slo_class(ttft_s=1.0), num_replicas=n, admission=False)
               .run(workload, load, point) for n in (1, 2)}
    p90 = {n: sorted(r.ttft_s for r in results[n].records)[180] for n in results}
    assert p90[2] < 0.25 * p90[1]
    # shared prefixes: each group's requests follow their cached prefix
    shared = fixed_workload(load, point, prompt_len=512, output_len=8, shared_prefix=496)
    fleet = FleetSimulator(make_spec(), cost, slo_class(ttft_s=1.0), num_replicas=2, admission=False)
    result = fleet.run(shared, load, point)
    assert result.prefix_hit_tokens > 0.85 * result.prefix_query_tokens
    assert all(r.outcome is Outcome.OK for r in result.records)
    assert statistics.mean(r.ttft_s for r in result.records) < statistics.mean(
        r.ttft_s for r in results[2].records)
