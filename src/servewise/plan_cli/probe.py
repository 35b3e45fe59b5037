"""``plan validate``'s speed probe: is this server, right now, as fast as the plan assumes?

Before each measured sweep, one request alone (a synthetic prompt, ``PROBE_OUTPUT`` tokens,
``ignore_eos``) on the warm server, and the same request simulated on an idle engine of the
plan's configuration. Their time per output token compares one fixed, simple thing: a lone
sequence's decode steps. When the machine has slowed down since it was profiled (a shared VM's
neighbours, frequency scaling), the probe says so, and by how much, next to the misses it
explains.
"""

from __future__ import annotations

from dataclasses import dataclass

from servewise.bench import BenchConfig, TargetConfig, run_benchmark
from servewise.bench.distributions import parse_length
from servewise.bench.records import Outcome
from servewise.bench.schedule import LoadConfig, LoadMode, LoadPoint, sweep
from servewise.bench.slo import SloSpec
from servewise.bench.workloads import WorkloadConfig, WorkloadKind
from servewise.plan.knobs import Knobs
from servewise.plan.workload import PointWorkload, SimRequest
from servewise.plan_cli.run import PlanRun

PROBE_PROMPT, PROBE_OUTPUT = 128, 64
_UNSEEN_IDS = 1 << 40  # prompt ids no other request holds: the simulated probe gets no prefix hit


@dataclass(frozen=True)
class SpeedProbe:
    label: str  # the configuration
    run: int  # 1-based repeat
    measured_tpot_s: float
    planned_tpot_s: float

    @property
    def error(self) -> float:
        """Planned relative to measured: −0.2 = the server ran 25% slower than planned."""
        return self.planned_tpot_s / self.measured_tpot_s - 1.0

    def describe(self) -> str:
        return (f"{self.label} run {self.run}: speed probe (one stream, {PROBE_OUTPUT} tokens) TPOT "
                f"{1e3 * self.measured_tpot_s:.2f} ms measured, {1e3 * self.planned_tpot_s:.2f} ms planned "
                f"({100 * self.error:+.0f}%)")


def speed_probe(run: PlanRun, knobs: Knobs, label: str, index: int, base_url: str) -> SpeedProbe | None:
    """Measure and simulate the probe request (None if the server did not complete it)."""
    target = TargetConfig(base_url=base_url, endpoint=run.endpoint, ignore_eos=True)
    workload = WorkloadConfig(kind=WorkloadKind.SYNTHETIC, input_len=parse_length(f"fixed:{PROBE_PROMPT}"),
                              output_len=parse_length(f"fixed:{PROBE_OUTPUT}"))
    load = LoadConfig(sweep(concurrencies=[1]), num_requests=1, seed=index)
    record = run_benchmark(BenchConfig(target, load, workload, SloSpec(), run.tokenizer)).points[0].records[0]
    measured = record.tpot_s if record.outcome is Outcome.OK else None
    if measured is None:
        return None
    prompt = record.num_input_tokens or PROBE_PROMPT
    point = LoadPoint(LoadMode.OPEN_LOOP, rate_per_s=1.0)
    alone = PointWorkload((SimRequest(tuple(range(_UNSEEN_IDS, _UNSEEN_IDS + prompt)), PROBE_OUTPUT),), (0.0,))
    simulated = run.planner.fleet(knobs).run(alone, LoadConfig((point,), num_requests=1), point).records[0]
    planned = simulated.tpot_s
    return None if planned is None else SpeedProbe(label, index, measured, planned)
