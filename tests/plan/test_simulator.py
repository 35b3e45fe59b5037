"""The simulator: the engine's own classes on a simulated clock, closed forms, determinism."""

from __future__ import annotations

import statistics

import pytest

from servewise.bench.records import Outcome
from servewise.bench.schedule import LoadConfig, LoadMode, LoadPoint
from servewise.engine.kv_cache_manager import KVCacheManager
from servewise.engine.queue_policy import FCFSQueue, PriorityQueue
from servewise.engine.scheduler import Scheduler
from servewise.plan.simulator import FleetSimulator
from servewise.plan.step_cost import StepShape
from servewise.plan.workload import PointWorkload, SimRequest
from servewise.slo import AdmissionController
from tests.plan.factories import fixed_workload, make_cost, make_spec, open_loop, slo_class


def run(workload: PointWorkload, load: LoadConfig, point: LoadPoint, *, cost=None, spec=None, admission=False,
        replicas=1, seed=0, slo=None):
    sim = FleetSimulator(spec or make_spec(), cost or make_cost(), slo or slo_class(), num_replicas=replicas,
                         admission=admission, seed=seed)
    return sim, sim.run(workload, load, point)


def test_replicas_are_the_engines_own_scheduler_kv_cache_queue_and_admission():
    load, point = open_loop(1.0, 3)
    sim = FleetSimulator(make_spec(queue_policy="priority"), make_cost(), slo_class(), num_replicas=2)
    sim.run(fixed_workload(load, point), load, point)
    assert len(sim.replicas) == 2
    for replica in sim.replicas:
        assert type(replica.scheduler) is Scheduler
        assert type(replica.kv) is KVCacheManager and replica.scheduler.kv_cache is replica.kv
        assert type(replica.scheduler.waiting) is PriorityQueue
        assert type(replica.admission) is AdmissionController
    fcfs = FleetSimulator(make_spec(), make_cost(), slo_class())
    fcfs.run(fixed_workload(load, point), load, point)
    assert type(fcfs.replicas[0].scheduler.waiting) is FCFSQueue


def test_a_scheduling_rule_changed_in_the_engine_changes_the_prediction(monkeypatch):
    load, point = open_loop(6.0, 60)
    workload = fixed_workload(load, point, prompt_len=64, output_len=16)
    _, before = run(workload, load, point)
    original = Scheduler._admit_waiting

    def static_batching(self, out, budget):  # a new rule in the engine's own class: admit only when idle
        return budget if self.running else original(self, out, budget)

    monkeypatch.setattr(Scheduler, "_admit_waiting", static_batching)
    _, after = run(workload, load, point)
    ttft = lambda result: statistics.mean(r.ttft_s for r in result.records)  # noqa: E731
    assert ttft(after) > 2 * ttft(before)


def test_prefix_caching_comes_from_the_engines_kv_cache_manager(monkeypatch):
    load, point = open_loop(2.0, 40)
    workload = fixed_workload(load, point, prompt_len=512, output_len=4, shared_prefix=480)
    _, cached = run(workload, load, point)
    assert cached.prefix_hit_tokens > 0.8 * cached.prefix_query_tokens
    monkeypatch.setattr(KVCacheManager, "find_cached_prefix", lambda self, request: [])
    _, uncached = run(workload, load, point)
    assert uncached.prefix_hit_tokens == 0
    mean_ttft = lambda result: statistics.mean(r.ttft_s for r in result.records)  # noqa: E731
    assert mean_ttft(uncached) > 2 * mean_ttft(cached)


def test_one_request_on_an_idle_engine_takes_exactly_the_profiled_step_times():
    cost = make_cost(fixed_s=0.02, per_token_s=0.001, per_sampled_s=0.003, per_paged_pair_s=1e-6,
                     per_dense_pair_s=2e-7, host_fixed_s=0.002, host_per_seq_s=0.0005, ingress_s=0.004)
    prompt, output = 100, 6
    point = LoadPoint(LoadMode.OPEN_LOOP, rate_per_s=1.0)
    workload = PointWorkload((SimRequest(tuple(range(10, 10 + prompt)), output),), (0.5,))
    _, result = run(workload, LoadConfig((point,), num_requests=1), point, cost=cost)
    record = result.records[0]
    prefill = StepShape(num_tokens=prompt, num_sampled=1, num_seqs=1, paged_pairs=0,
                        dense_pairs=prompt * (prompt + 1) // 2)
    assert record.ttft_s == pytest.approx(cost.request_ingress_s(prompt) + cost.step_s(prefill), rel=1e-12)
    decode_steps = [cost.step_s(StepShape(1, 1, 1, prompt + i + 1, 0)) for i in range(output - 1)]
    assert record.itls_s == pytest.approx(decode_steps, rel=1e-9)
    assert record.num_output_tokens == output and record.outcome is Outcome.OK


def test_one_sequence_at_a_time_queues_like_md1():
    """Poisson arrivals, fixed sizes, max_num_seqs=1: an M/D/1 queue, mean wait ρD / (2(1 - ρ))."""
    cost = make_cost(fixed_s=0.05, per_token_s=0.0005, per_sampled_s=0.0)
    prompt, output = 40, 5
    prefill_s = cost.step_s(StepShape(prompt, 1, 1, 0, prompt * (prompt + 1) // 2))
    service_s = prefill_s + (output - 1) * cost.step_s(StepShape(1, 1, 1, 0, 0))
    rho = 0.5
    load, point = open_loop(rho / service_s, 20_000, seed=7)
    workload = fixed_workload(load, point, prompt_len=prompt, output_len=output, seed=7)
    _, result = run(workload, load, point, cost=cost, spec=make_spec(max_num_seqs=1))
    mean_wait = statistics.mean(r.ttft_s for r in result.records) - prefill_s
    assert mean_wait == pytest.approx(rho * service_s / (2 * (1 - rho)), rel=0.05)


def test_a_seed_gives_identical_output():
    load, point = open_loop(8.0, 80)
    workload = fixed_workload(load, point, prompt_len=48, output_len=12, shared_prefix=32)
    results = [run(workload, load, point, replicas=2, seed=3, admission=True)[1] for _ in range(2)]
    assert [r.to_dict() for r in results[0].records] == [r.to_dict() for r in results[1].records]
    assert results[0].num_steps == results[1].num_steps


def test_requests_arriving_together_share_the_first_step_as_in_the_engine_loop():
    point = LoadPoint(LoadMode.OPEN_LOOP, rate_per_s=1.0)
    requests = tuple(SimRequest(tuple(range(i * 100, i * 100 + 20)), 3) for i in range(4))
    sim, result = run(PointWorkload(requests, (0.0,) * 4), LoadConfig((point,), num_requests=4), point)
    assert result.num_steps == 3  # one prefill step for all four, then two decode steps
    assert len({r.ttft_s for r in result.records}) == 1


def test_admission_sheds_under_overload_and_not_when_off():
    load, point = open_loop(40.0, 200)
    workload = fixed_workload(load, point, prompt_len=256, output_len=8)
    slo = slo_class(ttft_s=0.5, tpot_s=None)
    _, enforced = run(workload, load, point, admission=True, slo=slo)
    _, observed = run(workload, load, point, admission=False, slo=slo)
    shed = sum(r.outcome is Outcome.SHED for r in enforced.records)
    assert shed > 20 and all(r.http_status == 429 and r.retry_after for r in enforced.records
                             if r.outcome is Outcome.SHED)
    assert all(r.outcome is Outcome.OK for r in observed.records)
    admitted_p90 = sorted(r.ttft_s for r in enforced.records if r.outcome is Outcome.OK)[int(0.9 * (200 - shed))]
    assert admitted_p90 < sorted(r.ttft_s for r in observed.records)[180]


def test_a_request_longer_than_the_context_gets_a_400():
    point = LoadPoint(LoadMode.OPEN_LOOP, rate_per_s=1.0)
    workload = PointWorkload((SimRequest(tuple(range(100)), 50), SimRequest(tuple(range(200, 210)), 5)), (0.0, 0.1))
    _, result = run(workload, LoadConfig((point,), num_requests=2), point, spec=make_spec(max_model_len=128))
    assert [r.http_status for r in result.records] == [400, 200]


def test_closed_loop_keeps_the_concurrency_in_flight():
    point = LoadPoint(LoadMode.CLOSED_LOOP, concurrency=3)
    requests = tuple(SimRequest(tuple(range(i * 50, i * 50 + 30)), 4) for i in range(5))
    load = LoadConfig((point,), num_requests=12)
    _, result = run(PointWorkload(requests, None), load, point)
    assert len(result.records) == 12
    events = sorted([(r.send_s, 1) for r in result.records] + [(r.end_s, -1) for r in result.records])
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak == 3


def test_preemption_by_recompute_happens_when_the_pool_runs_out():
    load, point = open_loop(50.0, 40)
    workload = fixed_workload(load, point, prompt_len=60, output_len=60)
    _, result = run(workload, load, point, spec=make_spec(num_blocks=40, block_size=16, max_model_len=256))
    assert result.num_preemptions > 0
    assert all(r.outcome is Outcome.OK and r.num_output_tokens == 60 for r in result.records)


def test_points_served_one_after_the_other_share_the_fleets_prefix_cache():
    load, point = open_loop(4.0, 30)
    workload = fixed_workload(load, point, prompt_len=256, output_len=4)
    fleet = FleetSimulator(make_spec(), make_cost(), slo_class(), admission=False)
    cold, warm = fleet.run(workload, load, point), fleet.run(workload, load, point)  # the same prompts again
    assert cold.prefix_hit_tokens == 0 and warm.prefix_hit_tokens > 0.9 * warm.prefix_query_tokens
    assert statistics.mean(r.ttft_s for r in warm.records) < 0.2 * statistics.mean(r.ttft_s for r in cold.records)
    assert [r.send_s for r in warm.records] == pytest.approx([r.send_s for r in cold.records])  # from each start
    assert warm.end_s == pytest.approx(cold.end_s, rel=0.2)
