"""Small builders shared by the bench tests: configs, records, results, runs against the fake server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from servewise.bench.client import TargetConfig
from servewise.bench.config import BenchConfig
from servewise.bench.distributions import parse_length
from servewise.bench.fake_server import FakeBehaviour, FakeOpenAIServer, directive
from servewise.bench.metrics import summarize
from servewise.bench.records import Outcome, RequestRecord
from servewise.bench.results import BenchResult, PointResult
from servewise.bench.runner import run_benchmark_async
from servewise.bench.schedule import LoadConfig, LoadPoint, sweep
from servewise.bench.slo import SloSpec
from servewise.bench.workloads import WorkloadConfig, WorkloadKind

DATA_DIR = Path(__file__).parent / "data"


def make_config(base_url: str, *, points: Sequence[LoadPoint] | None = None, target: dict[str, Any] | None = None,
                load: dict[str, Any] | None = None, workload: dict[str, Any] | None = None,
                slo: SloSpec | None = None, tokenizer: str = "approx") -> BenchConfig:
    """A small, fast config: closed loop at concurrency 1, 4 requests of 8 tokens in and out."""
    load_fields: dict[str, Any] = {"num_requests": 4, **(load or {})}
    workload_fields: dict[str, Any] = {"input_len": parse_length("8"), "output_len": parse_length("8"),
                                       **(workload or {})}
    return BenchConfig(target=TargetConfig(base_url, **(target or {})),
                       load=LoadConfig(points=tuple(points or sweep(concurrencies=[1])), **load_fields),
                       workload=WorkloadConfig(**workload_fields), slo=slo or SloSpec(), tokenizer=tokenizer)


def scripted_dataset(tmp_path: Path, behaviours: Sequence[dict[str, Any]], name: str = "script.jsonl") -> Path:
    """A prompts file with one request per behaviour, each carrying its fake-server directive."""
    path = tmp_path / name
    lines = [json.dumps({"prompt": f"request {i} {directive(**b)}"}) for i, b in enumerate(behaviours)]
    path.write_text("\n".join(lines) + "\n")
    return path


def scripted_config(base_url: str, dataset: Path, num_requests: int, **kwargs: Any) -> BenchConfig:
    """Every scripted request once, all in flight together (dataset order is shuffled, never repeated)."""
    kwargs.setdefault("points", sweep(concurrencies=[num_requests]))
    load = {"num_requests": num_requests, **kwargs.pop("load", {})}
    workload = {"kind": WorkloadKind.DATASET, "dataset_path": str(dataset), **kwargs.pop("workload", {})}
    return make_config(base_url, load=load, workload=workload, **kwargs)


def run_with_server(config_for: Any, default: FakeBehaviour | None = None) -> tuple[BenchResult, FakeOpenAIServer]:
    """Start a fake server, build the config from its base URL, run the bench; one event loop for both."""

    async def scenario() -> tuple[BenchResult, FakeOpenAIServer]:
        async with FakeOpenAIServer(default or FakeBehaviour()) as server:
            return await run_benchmark_async(config_for(server.base_url)), server

    return asyncio.run(scenario())


def make_record(index: int = 0, *, outcome: Outcome = Outcome.OK, send_s: float = 0.0, ttft_s: float | None = 0.1,
                token_gaps_s: Sequence[float] = (0.02, 0.02, 0.02), **fields: Any) -> RequestRecord:
    """A finished request: first token at ttft_s, then one chunk after each gap; e2e at the last chunk."""
    times = [] if ttft_s is None else [ttft_s]
    for gap in token_gaps_s if ttft_s is not None else ():
        times.append(times[-1] + gap)
    values: dict[str, Any] = {"http_status": 200 if outcome is Outcome.OK else None, "ttft_s": ttft_s,
                              "e2e_s": times[-1] if times else 0.05, "token_times_s": times,
                              "num_output_tokens": len(times), "num_input_tokens": 10}
    values.update(fields)
    return RequestRecord(index=index, scheduled_s=send_s, send_s=send_s, outcome=outcome, **values)


def make_result(points: dict[LoadPoint, list[RequestRecord]], slo: SloSpec | None = None) -> BenchResult:
    """A BenchResult built from records alone, with its config dict as a real run would write it."""
    slo = slo or SloSpec()
    config = make_config("http://127.0.0.1:9/v1", points=list(points), slo=slo).to_dict()
    return BenchResult(config=config, model="m", tokenizer="approx", started_at="2026-01-01T00:00:00+00:00",
                       points=[PointResult(p, 10.0 * i, summarize(records, slo), records)
                               for i, (p, records) in enumerate(points.items())])


def write_tiny_tokenizer(path: Path, vocab_size: int = 300) -> Path:
    """A small BPE tokenizer.json trained on the built-in corpus: many words split into several tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from servewise.bench.corpus import BUILTIN_CORPUS

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([BUILTIN_CORPUS], trainers.BpeTrainer(vocab_size=vocab_size,
                                                                         special_tokens=["[UNK]"]))
    tokenizer.save(str(path))
    return path
