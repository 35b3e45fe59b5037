"""The simulator schedules exactly the steps the real engine runs (same scheduler, same rules)."""

from __future__ import annotations

import random

from servewise.bench.schedule import LoadConfig, LoadMode, LoadPoint
from servewise.config import SchedulerConfig
from servewise.plan.knobs import EngineSpec
from servewise.plan.simulator import FleetSimulator
from servewise.plan.workload import PointWorkload, SimRequest
from servewise.types import SamplingParams
from tests.engine.conftest import make_engine
from tests.plan.factories import make_cost, slo_class


def _requests(vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(5)
    shared = [rng.randrange(5, vocab) for _ in range(24)]
    out = []
    for i in range(7):
        tail = [rng.randrange(5, vocab) for _ in range(rng.randint(6, 40))]
        out.append(((shared if i % 2 else []) + tail, rng.randint(5, 30)))
    return out


def test_the_simulator_runs_the_engines_steps_step_for_step(tiny_dirs):
    # a pool small enough for preemption, a budget small enough for chunked prefill, shared prefixes
    engine = make_engine(tiny_dirs["llama"], num_blocks=28, block_size=4, max_num_seqs=4, max_num_batched_tokens=24)
    requests = _requests(engine.vocab_size)
    for i, (prompt, num_out) in enumerate(requests):
        engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=num_out, ignore_eos=True))
    while engine.has_unfinished_requests:
        engine.step()
    engine_steps = [(s.num_tokens, s.num_prefill_tokens, s.num_requests) for s in engine.stats.recent_steps]
    assert engine.scheduler.num_preemptions > 0 and engine.kv_cache.num_prefix_hit_tokens > 0

    spec = EngineSpec(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=24), num_blocks=28, block_size=4,
                      enable_prefix_caching=True, max_model_len=engine.max_model_len)
    point = LoadPoint(LoadMode.OPEN_LOOP, rate_per_s=1.0)
    workload = PointWorkload(tuple(SimRequest(tuple(p), n) for p, n in requests), (0.0,) * len(requests))
    sim = FleetSimulator(spec, make_cost(), slo_class(), admission=False)
    result = sim.run(workload, LoadConfig((point,), num_requests=len(requests)), point)
    # every request arrived at t = 0, so admission never looked at a step: they are all still unseen
    sim_steps = [(s.num_tokens, s.num_prefill_tokens, s.num_requests) for s in sim.replicas[0].unseen_steps]
    assert len(engine_steps) < 256  # the engine keeps its last 256 steps: all of them here
    assert sim_steps == engine_steps
    assert result.num_preemptions == engine.scheduler.num_preemptions
    assert result.prefix_hit_tokens == engine.kv_cache.num_prefix_hit_tokens
    assert [r.num_output_tokens for r in result.records] == [n for _, n in requests]
