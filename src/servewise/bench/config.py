"""The configuration of one bench run: target, workload, load shape, SLOs, tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from servewise.bench.client import TargetConfig
from servewise.bench.schedule import LoadConfig, LoadMode
from servewise.bench.slo import SloSpec
from servewise.bench.workloads import WorkloadConfig


@dataclass(frozen=True)
class BenchConfig:
    target: TargetConfig
    load: LoadConfig
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    slo: SloSpec = field(default_factory=SloSpec)
    # Where prompt token counts come from: "auto" (the server's /tokenize if it answers, else
    # an approximation), "server", "approx", or a tokenizer.json / model path.
    tokenizer: str = "auto"

    def __post_init__(self) -> None:
        modes = {p.mode for p in self.load.points}
        if len(modes) > 1:
            raise ValueError("a sweep is either over rates or over concurrencies, not both")

    @property
    def max_connections(self) -> int | None:
        """Connection-pool size: the largest concurrency of a closed-loop sweep, else the open-loop cap."""
        if self.load.points[0].mode is LoadMode.CLOSED_LOOP:
            return max(p.concurrency or 1 for p in self.load.points)
        return self.load.max_concurrency

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for results.json; the API key is never included."""
        target, load, workload = self.target, self.load, self.workload
        return {
            "target": {"base_url": target.base_url, "endpoint": target.endpoint.value, "model": target.model,
                       "request_timeout_s": target.request_timeout_s, "ignore_eos": target.ignore_eos},
            "load": {"points": [p.to_dict() for p in load.points], "num_requests": load.num_requests,
                     "duration_s": load.duration_s, "warmup_requests": load.warmup_requests,
                     "warmup_s": load.warmup_s, "burstiness": load.burstiness,
                     "max_concurrency": load.max_concurrency, "seed": load.seed,
                     "prompt_pool_size": load.prompt_pool_size},
            "workload": {"kind": workload.kind.value, "input_len": str(workload.input_len),
                         "output_len": None if workload.output_len is None else str(workload.output_len),
                         "dataset_path": workload.dataset_path, "dataset_format": workload.dataset_format,
                         "corpus_path": workload.corpus_path, "num_prefix_groups": workload.num_prefix_groups,
                         "prefix_len": workload.prefix_len, "long_fraction": workload.long_fraction,
                         "long_input_len": str(workload.long_input_len)},
            "slo": {"ttft_s": self.slo.ttft_s, "tpot_s": self.slo.tpot_s, "e2e_s": self.slo.e2e_s,
                    "itl_s": self.slo.itl_s},
            "tokenizer": self.tokenizer,
        }
