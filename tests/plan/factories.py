"""Small factories for planner tests: step-cost models with known coefficients, engine specs,
point workloads; no model, no server."""

from __future__ import annotations

import random

from servewise.bench.schedule import LoadConfig, LoadMode, LoadPoint, arrival_times_s
from servewise.config import SchedulerConfig
from servewise.plan.knobs import EngineSpec
from servewise.plan.step_cost import RowCost, StepCostModel
from servewise.plan.workload import PointWorkload, SimRequest
from servewise.slo import SLOClass

BOUNDARIES = (16, 64)


def make_cost(*, fixed_s: float = 0.010, per_token_s: float = 0.001, per_sampled_s: float = 0.0005,
              per_paged_pair_s: float = 0.0, per_dense_pair_s: float = 0.0, host_fixed_s: float = 0.0,
              host_per_seq_s: float = 0.0, ingress_s: float = 0.0) -> StepCostModel:
    """The same coefficients in every row regime, unless a test wants regimes."""
    n = len(BOUNDARIES) + 1
    return StepCostModel(tokens=RowCost(BOUNDARIES, (fixed_s,) * n, (per_token_s,) * n),
                         sampled=RowCost(BOUNDARIES, (0.0,) * n, (per_sampled_s,) * n),
                         per_paged_pair_fused_s=per_paged_pair_s, per_paged_pair_s=per_paged_pair_s,
                         per_dense_pair_s=per_dense_pair_s, host_fixed_s=host_fixed_s, host_per_seq_s=host_per_seq_s,
                         ingress_s=ingress_s)


def make_spec(*, max_num_seqs: int = 16, max_num_batched_tokens: int = 256, num_blocks: int = 4096,
              block_size: int = 16, prefix_caching: bool = True, max_model_len: int = 8192,
              queue_policy: str = "fcfs") -> EngineSpec:
    return EngineSpec(SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                                      queue_policy=queue_policy),
                      num_blocks, block_size, prefix_caching, max_model_len)


def slo_class(ttft_s: float | None = 2.0, tpot_s: float | None = 0.15, slack: float = 1.0) -> SLOClass:
    return SLOClass(name="interactive", ttft_s=ttft_s, tpot_s=tpot_s, admission_slack=slack)


def open_loop(rate: float, num_requests: int, *, seed: int = 0, burstiness: float = 1.0) -> tuple[LoadConfig, LoadPoint]:
    point = LoadPoint(LoadMode.OPEN_LOOP, rate_per_s=rate)
    return LoadConfig((point,), num_requests=num_requests, burstiness=burstiness, seed=seed), point


def fixed_workload(load: LoadConfig, point: LoadPoint, *, prompt_len: int = 64, output_len: int = 8,
                   seed: int = 0, shared_prefix: int = 0) -> PointWorkload:
    """Requests of fixed sizes (distinct prompts, or sharing their first ``shared_prefix`` tokens) at
    the bench's own arrival times."""
    assert point.rate_per_s is not None
    arrivals = arrival_times_s(point.rate_per_s, load, random.Random(f"{seed}:0:schedule"))
    prefix = tuple(range(1000, 1000 + shared_prefix))
    requests = tuple(SimRequest(prefix + tuple(100_000 + i * 1000 + j for j in range(prompt_len - shared_prefix)),
                                output_len) for i in range(len(arrivals)))
    return PointWorkload(requests, tuple(arrivals))


def make_profile(*, cpu_model: str = "Test CPU", fingerprint: str = "abc123", linear_backend: str = "auto",
                 threads: int = 2, cost: StepCostModel | None = None):
    """A profile as `servewise profile` writes it, with a known cost model."""
    from servewise.plan.fit import FitError, StepSample
    from servewise.plan.machine import MachineInfo
    from servewise.plan.profile import BackendInfo, ModelIdentity, Profile, ProfiledRange
    from servewise.plan.step_cost import StepShape

    shape = StepShape(512, 64, 64, 200_000, 300_000)
    return Profile(machine=MachineInfo(cpu_model, ("avx", "avx2"), 2, "2.13.0", "AVX2"),
                   model=ModelIdentity("tiny", "/models/tiny", fingerprint, {"architecture": "llama"}),
                   backend=BackendInfo("cpu", linear_backend, threads, "auto"), cost=cost or make_cost(),
                   fit=FitError(0.99, 0.03, 0.04, 0.2, 100), host_mape=0.1, ranges=ProfiledRange.of([shape]),
                   created_at="2026-12-01T00:00:00+00:00", duration_s=60.0, samples=(StepSample(shape, 0.5),))


class FixedSource:
    """A WorkloadSource of fixed-size requests at the bench's arrival times (no tokenizer needed)."""

    def __init__(self, rates: list[float], num_requests: int, *, prompt_len: int = 64, output_len: int = 16) -> None:
        self.load = LoadConfig(tuple(LoadPoint(LoadMode.OPEN_LOOP, rate_per_s=r) for r in rates),
                               num_requests=num_requests)
        self.prompt_len, self.output_len = prompt_len, output_len

    def _workload(self, load: LoadConfig, point: LoadPoint, index: int, seed: int) -> PointWorkload:
        assert point.rate_per_s is not None
        arrivals = arrival_times_s(point.rate_per_s, load, random.Random(f"{seed}:{index}:schedule"))
        first = 10_000_000 * (index + 1) + 100_000 * seed  # each point and seed its own prompts, as the bench's
        requests = tuple(SimRequest(tuple(first + i * 1000 + j for j in range(self.prompt_len)), self.output_len)
                         for i in range(len(arrivals)))
        return PointWorkload(requests, tuple(arrivals))

    def point(self, index: int, seed_offset: int) -> PointWorkload:
        return self._workload(self.load, self.load.points[index], index, self.load.seed + seed_offset)

    def warmup(self, seed_offset: int):
        from servewise.plan.sources import warmup_load

        load = warmup_load(self.load)
        requests = tuple(SimRequest(tuple(900_000 + i * 1000 + j for j in range(self.prompt_len)), self.output_len)
                         for i in range(8))
        return PointWorkload(requests, None), load, load.points[0]

    def at_rate(self, rate: float) -> tuple[PointWorkload, LoadConfig]:
        from servewise.plan.sources import capacity_load

        load, point = capacity_load(self.load, rate)
        return self._workload(load, point, 0, load.seed), load
