"""Runs a bench: each sweep point in turn, open loop or closed loop, then its summary.

The Python API: ``run_benchmark(config)`` (or ``await run_benchmark_async(config)``)
returns a :class:`BenchResult`; ``servewise.bench.output.write_outputs`` writes
results.json, report.md and the charts.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

from servewise.bench.client import BenchClient, BenchSetupError, build_body
from servewise.bench.config import BenchConfig
from servewise.bench.metrics import summarize
from servewise.bench.progress import NullProgress, ProgressSink
from servewise.bench.records import Outcome, RequestRecord
from servewise.bench.results import BenchResult, PointResult
from servewise.bench.schedule import LoadConfig
from servewise.bench.tokenizer import resolve_token_counter
from servewise.bench.workloads import BenchRequest, Workload, build_point


def run_benchmark(config: BenchConfig, progress: ProgressSink | None = None) -> BenchResult:
    """Run every point of ``config`` against its target; blocking."""
    return asyncio.run(run_benchmark_async(config, progress))


async def run_benchmark_async(config: BenchConfig, progress: ProgressSink | None = None) -> BenchResult:
    progress = progress or NullProgress()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    async with BenchClient(config.target, max_connections=config.max_connections) as client:
        model = config.target.model or await _first_model(client)
        counter = await resolve_token_counter(config.tokenizer, client, model)
        workload = Workload(config.workload, counter)
        run_origin_s = time.perf_counter()
        points = []
        for index, point in enumerate(config.load.points):
            requests, arrivals = await build_point(index, point, config.load, workload)
            bodies = [build_body(r.messages, r.max_tokens, model, config.target) for r in requests]
            progress.point_started(point.label, _expected_total(config.load, arrivals))
            sender = _Sender(client, requests, bodies, progress)
            if arrivals is not None:
                records = await _open_loop(sender, arrivals, config.load)
            else:
                assert point.concurrency is not None  # LoadPoint guarantees it for closed loop
                records = await _closed_loop(sender, point.concurrency, config.load)
            progress.point_finished()
            records.sort(key=lambda r: r.index)
            points.append(PointResult(point, sender.origin_s - run_origin_s, summarize(records, config.slo),
                                      records))
    return BenchResult(config=config.to_dict(), model=model, tokenizer=counter.name, started_at=started_at,
                       points=points, max_model_len=counter.max_model_len)


async def _first_model(client: BenchClient) -> str:
    models = await client.list_models()
    if not models:
        raise BenchSetupError(f"GET {client.target.base_url}/models lists no model; pass --model")
    return models[0]


def _expected_total(load: LoadConfig, arrivals: list[float] | None) -> int | None:
    if arrivals is not None:
        return len(arrivals)
    if load.num_requests is not None and not load.warmup_s:
        return load.warmup_requests + load.num_requests
    return None


class _Sender:
    """Sends request ``index`` of a point (prompts are reused in turn past the pool's end)."""

    def __init__(self, client: BenchClient, requests: list[BenchRequest], bodies: list[bytes],
                 progress: ProgressSink) -> None:
        self._client = client
        self._requests = requests
        self._bodies = bodies
        self._progress = progress
        # The point's t = 0 on the perf_counter clock: built right before the first send.
        self.origin_s = time.perf_counter()

    async def send(self, index: int, scheduled_s: float, warmup: bool,
                   semaphore: asyncio.Semaphore | None = None) -> RequestRecord:
        request = self._requests[index % len(self._requests)]
        record = RequestRecord(index=index, scheduled_s=scheduled_s, send_s=scheduled_s, outcome=Outcome.OK,
                               kind=request.kind, num_input_tokens=request.num_input_tokens, warmup=warmup)
        body = self._bodies[index % len(self._bodies)]
        if semaphore is None:
            await self._client.send(body, record, self.origin_s)
        else:
            async with semaphore:
                await self._client.send(body, record, self.origin_s)
        self._progress.request_done(record)
        return record


async def _open_loop(sender: _Sender, arrivals: list[float], load: LoadConfig) -> list[RequestRecord]:
    semaphore = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None
    tasks = []
    for index, at_s in enumerate(arrivals):
        delay_s = sender.origin_s + at_s - time.perf_counter()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        tasks.append(asyncio.create_task(sender.send(index, at_s, load.is_warmup(index, at_s), semaphore)))
    return list(await asyncio.gather(*tasks))


async def _closed_loop(sender: _Sender, concurrency: int, load: LoadConfig) -> list[RequestRecord]:
    """``concurrency`` workers, each sending its next request as soon as its last one ends."""
    records: list[RequestRecord] = []
    next_index = num_measured = 0

    async def worker() -> None:
        nonlocal next_index, num_measured
        while True:
            now_s = time.perf_counter() - sender.origin_s
            warmup = load.is_warmup(next_index, now_s)
            if load.duration_s is not None:
                if now_s >= load.warmup_s + load.duration_s:
                    return
            elif not warmup and num_measured >= (load.num_requests or 0):
                return
            index = next_index
            next_index += 1
            num_measured += not warmup
            records.append(await sender.send(index, now_s, warmup))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records
