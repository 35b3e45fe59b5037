"""The planner's requests: what ``servewise bench`` would send, tokenized as the server would.

- Prompts come from the bench's own workload definitions and seeds (``build_point``), so
  a plan point and a bench point at the same flags send the same prompts at the same times.
- Prompt token ids are the server's: for the chat endpoint the model's chat template then
  ``encode(add_special_tokens=False)``; for completions the contents joined by blank
  lines, ``encode()``. Real ids matter: prefix caching matches them block by block.
- Prompt lengths are cut with the bench's ``--tokenizer`` choice; ``auto``/``server`` mean the
  model's own tokenizer, which is what the server's ``/tokenize`` answers.
- Each request generates exactly ``max_tokens`` tokens (run the bench with ``--ignore-eos``
  to compare); ``--from-bench`` replays a measured run's send times and output lengths.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from servewise.bench.client import Endpoint
from servewise.bench.distributions import parse_length
from servewise.bench.records import Outcome
from servewise.bench.results import BenchResult
from servewise.bench.schedule import LoadConfig, LoadPoint
from servewise.bench.slo import SloSpec
from servewise.bench.tokenizer import ApproxTokenCounter, LocalTokenCounter, TokenCounter
from servewise.bench.workloads import BenchRequest, Workload, WorkloadConfig, WorkloadKind, build_point

log = logging.getLogger("servewise.plan")


class ServerTokenizer(Protocol):
    """What the planner needs of the model's tokenizer (``servewise.loading.Tokenizer`` fits)."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str: ...


@dataclass(frozen=True)
class SimRequest:
    prompt_token_ids: tuple[int, ...]  # as the server tokenizes the request
    max_tokens: int  # output tokens it generates (and asks for)
    kind: str = "default"  # workload class, as the bench reports it


@dataclass(frozen=True)
class PointWorkload:
    """The requests of one load point, in send order (index i is the bench's request i)."""

    requests: tuple[SimRequest, ...]
    arrivals_s: tuple[float, ...] | None  # open loop (or a replay): send times; None = closed loop
    warmup: tuple[bool, ...] | None = None  # a replay's own warm-up flags; None = from the LoadConfig


class RequestFactory:
    """Builds the requests of each point; the dataset or corpus is read once."""

    def __init__(self, config: WorkloadConfig, tokenizer: ServerTokenizer, *, endpoint: Endpoint = Endpoint.CHAT,
                 counter: str = "auto") -> None:
        self.config = config
        self.endpoint = endpoint
        self._tokenizer = tokenizer
        self._workload = Workload(config, token_counter(counter, tokenizer))
        self._ids: dict[tuple[tuple[str, str], ...], tuple[int, ...]] = {}

    def point(self, index: int, point: LoadPoint, load: LoadConfig) -> PointWorkload:
        requests, arrivals = asyncio.run(build_point(index, point, load, self._workload))
        return PointWorkload(tuple(self._sim(r) for r in requests), None if arrivals is None else tuple(arrivals))

    def _sim(self, request: BenchRequest) -> SimRequest:
        ids = self._ids.get(request.messages)
        if ids is None:
            ids = self._ids[request.messages] = tuple(self._token_ids(request))
        return SimRequest(ids, request.max_tokens, request.kind)

    def _token_ids(self, request: BenchRequest) -> list[int]:
        if self.endpoint is Endpoint.CHAT:
            text = self._tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in request.messages],
                                                       add_generation_prompt=True)
            return self._tokenizer.encode(text, add_special_tokens=False)
        return self._tokenizer.encode("\n\n".join(c for _, c in request.messages))


def token_counter(spec: str, tokenizer: ServerTokenizer) -> TokenCounter:
    """The bench's --tokenizer choice, with the model's tokenizer standing in for the server's /tokenize."""
    if spec in ("auto", "server"):
        return LocalTokenCounter(lambda text: tokenizer.encode(text, add_special_tokens=True), "server")
    if spec == "approx":
        return ApproxTokenCounter()
    return LocalTokenCounter.from_path(spec)


@dataclass(frozen=True)
class BenchRun:
    """What a bench results.json asked for, rebuilt as configs."""

    workload: WorkloadConfig
    load: LoadConfig
    endpoint: Endpoint
    tokenizer: str
    slo: SloSpec


def bench_run_of(result: BenchResult) -> BenchRun:
    config = result.config
    w, load = config["workload"], config["load"]
    try:
        workload = WorkloadConfig(
            kind=WorkloadKind(w["kind"]), input_len=parse_length(w["input_len"]),
            output_len=parse_length(w["output_len"]) if w.get("output_len") else None,
            dataset_path=w.get("dataset_path"), dataset_format=w.get("dataset_format", "auto"),
            corpus_path=w.get("corpus_path"), num_prefix_groups=w["num_prefix_groups"], prefix_len=w["prefix_len"],
            long_fraction=w["long_fraction"], long_input_len=parse_length(w["long_input_len"]))
        load_config = LoadConfig(
            points=tuple(LoadPoint.from_dict(p) for p in load["points"]), num_requests=load["num_requests"],
            duration_s=load["duration_s"], warmup_requests=load["warmup_requests"], warmup_s=load["warmup_s"],
            burstiness=load["burstiness"], max_concurrency=load["max_concurrency"], seed=load["seed"],
            prompt_pool_size=load["prompt_pool_size"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the bench results do not describe their workload and load ({exc!r})") from None
    return BenchRun(workload, load_config, Endpoint(config["target"]["endpoint"]), config.get("tokenizer", "auto"),
                    result.slo)


def replay(result: BenchResult, factory: RequestFactory, run: BenchRun) -> list[tuple[LoadPoint, PointWorkload]]:
    """Each measured point's requests (rebuilt from the same seeds) at their measured send times, with
    their measured output lengths (requests that failed keep the length they asked for)."""
    out = []
    for index, point in enumerate(result.points):
        built = factory.point(index, point.load, run.load).requests
        requests, arrivals, warmup = [], [], []
        for record in sorted(point.records, key=lambda r: r.send_s):
            base = built[record.index % len(built)]
            num_out = record.num_output_tokens if record.outcome is Outcome.OK and record.num_output_tokens else None
            requests.append(SimRequest(base.prompt_token_ids, num_out or base.max_tokens, base.kind))
            arrivals.append(record.send_s)
            warmup.append(record.warmup)
        _warn_if_lengths_differ(point.records, requests)
        out.append((point.load, PointWorkload(tuple(requests), tuple(arrivals), tuple(warmup))))
    return out


def _warn_if_lengths_differ(records: Sequence[Any], requests: Sequence[SimRequest]) -> None:
    measured = [r.num_input_tokens if r.usage_reported else None for r in sorted(records, key=lambda r: r.send_s)]
    differ = sum(1 for m, q in zip(measured, requests, strict=True)
                 if m is not None and m != len(q.prompt_token_ids))
    if differ:
        log.warning("%d of %d replayed prompts tokenize to another length than the server reported; "
                    "was the run made against another model or chat template?", differ, len(requests))
