"""servewise bench: a load tester for any OpenAI-compatible server, over HTTP only.

Python API::

    from servewise.bench import BenchConfig, LoadConfig, TargetConfig, run_benchmark, sweep, write_outputs

    config = BenchConfig(TargetConfig("http://127.0.0.1:8000/v1"), LoadConfig(sweep(rates=[1, 2]), num_requests=50))
    result = run_benchmark(config)
    write_outputs(result, "bench-results/run1")

The CLI is ``servewise bench`` (``servewise.bench.cli.main``).
"""

from servewise.bench.client import BenchSetupError, Endpoint, TargetConfig
from servewise.bench.config import BenchConfig
from servewise.bench.output import write_outputs
from servewise.bench.results import BenchResult
from servewise.bench.runner import run_benchmark, run_benchmark_async
from servewise.bench.schedule import LoadConfig, LoadPoint, sweep
from servewise.bench.slo import SloSpec, parse_slo
from servewise.bench.workloads import WorkloadConfig, WorkloadKind

__all__ = [
    "BenchConfig", "BenchResult", "BenchSetupError", "Endpoint", "LoadConfig", "LoadPoint", "SloSpec",
    "TargetConfig", "WorkloadConfig", "WorkloadKind", "parse_slo", "run_benchmark", "run_benchmark_async",
    "sweep", "write_outputs",
]
