"""What to send: the requests of one load point, built before its clock starts.

- ``synthetic``: prompts cut from real text to sampled token lengths, ``max_tokens``
  sampled from the output distribution;
- ``dataset``: prompts from a file (see datasets.py); ``max_tokens`` is the reference
  answer's token count unless ``--output-len`` fixes it;
- ``shared-prefix``: N groups, each with its own long system prompt shared by every
  request of the group, then a short question (exercises prefix caching);
- ``mixed``: long documents among short chat turns (exercises chunked prefill).

Every random choice comes from the ``random.Random`` passed in, drawn in a fixed
order before any (concurrent) tokenizer call, so a seed fixes the requests.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from servewise.bench.client import Message
from servewise.bench.corpus import load_corpus
from servewise.bench.datasets import FORMATS, DatasetEntry, load_dataset
from servewise.bench.distributions import LengthDistribution, parse_length
from servewise.bench.schedule import LoadConfig, LoadMode, LoadPoint, arrival_times_s
from servewise.bench.textcut import TextCutter
from servewise.bench.tokenizer import TokenCounter

log = logging.getLogger("servewise.bench")

DEFAULT_OUTPUT_LEN = parse_length("fixed:128")
# Tokenizer calls in flight while building prompts (each is one HTTP call with /tokenize).
MAX_CONCURRENT_COUNTS = 32
T = TypeVar("T")


class WorkloadKind(str, enum.Enum):
    SYNTHETIC = "synthetic"
    DATASET = "dataset"
    SHARED_PREFIX = "shared-prefix"
    MIXED = "mixed"


@dataclass(frozen=True)
class WorkloadConfig:
    kind: WorkloadKind = WorkloadKind.SYNTHETIC
    # Prompt tokens: synthetic prompts; shared-prefix questions after the prefix; mixed chat turns.
    input_len: LengthDistribution = field(default_factory=lambda: parse_length("fixed:256"))
    # max_tokens of each request; None = the dataset's reference lengths, else DEFAULT_OUTPUT_LEN.
    output_len: LengthDistribution | None = None
    dataset_path: str | None = None  # the file of the dataset workload
    dataset_format: str = "auto"  # one of datasets.FORMATS
    corpus_path: str | None = None  # text synthetic prompts are cut from; None = the built-in corpus
    num_prefix_groups: int = 8  # shared-prefix: groups, each with its own system prompt
    prefix_len: int = 1024  # shared-prefix: tokens of each group's system prompt
    long_fraction: float = 0.25  # mixed: share of requests that are long documents
    long_input_len: LengthDistribution = field(default_factory=lambda: parse_length("uniform:2048,4096"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", WorkloadKind(self.kind))
        if self.kind is WorkloadKind.DATASET and not self.dataset_path:
            raise ValueError("the dataset workload needs a dataset file (--dataset)")
        if self.dataset_format not in FORMATS:
            raise ValueError(f"dataset format must be one of {', '.join(FORMATS)}")
        if self.num_prefix_groups < 1 or self.prefix_len < 1:
            raise ValueError("shared-prefix needs ≥ 1 group and a prefix of ≥ 1 token")
        if not 0.0 <= self.long_fraction <= 1.0:
            raise ValueError("long fraction must be in [0, 1]")


@dataclass(frozen=True)
class BenchRequest:
    messages: tuple[Message, ...]  # the conversation; the completions endpoint gets the contents joined
    max_tokens: int  # output tokens asked for
    num_input_tokens: int | None  # the bench tokenizer's count of the prompt text
    kind: str = "default"  # workload class, reported per request ("long", "chat", ...)


class Workload:
    """Builds the requests of each point; the corpus or dataset is read once."""

    def __init__(self, config: WorkloadConfig, counter: TokenCounter) -> None:
        self.config = config
        self._counter = counter
        self._entries: list[DatasetEntry] = []
        self._cutter: TextCutter | None = None
        if config.kind is WorkloadKind.DATASET:
            assert config.dataset_path is not None  # checked by WorkloadConfig
            self._entries = load_dataset(config.dataset_path, config.dataset_format)
        else:
            self._cutter = TextCutter(load_corpus(config.corpus_path), counter)
        self._entry_tokens: dict[int, tuple[int, int | None]] = {}  # entry index → (input, reference)

    async def build(self, num_requests: int, rng: random.Random) -> list[BenchRequest]:
        kind = self.config.kind
        if kind is WorkloadKind.DATASET:
            requests = await self._dataset(num_requests, rng)
        elif kind is WorkloadKind.SHARED_PREFIX:
            requests = await self._shared_prefix(num_requests, rng)
        else:
            requests = await self._synthetic(num_requests, rng, mixed=kind is WorkloadKind.MIXED)
        self._warn_if_too_long(requests)
        return requests

    @property
    def _output_len(self) -> LengthDistribution:
        return self.config.output_len or DEFAULT_OUTPUT_LEN

    async def _synthetic(self, num_requests: int, rng: random.Random, *, mixed: bool) -> list[BenchRequest]:
        cutter = self._text_cutter()
        await cutter.calibrate()
        plans = []
        for _ in range(num_requests):
            is_long = mixed and rng.random() < self.config.long_fraction
            lengths = self.config.long_input_len if is_long else self.config.input_len
            kind = ("long" if is_long else "chat") if mixed else "default"
            plans.append((lengths.sample(rng), self._output_len.sample(rng), rng.randrange(cutter.num_words), kind))
        passages = await _gather_bounded(cutter.cut(n_in, start) for n_in, _, start, _ in plans)
        return [BenchRequest((("user", text),), n_out, n_tokens, kind)
                for (text, n_tokens), (_, n_out, _, kind) in zip(passages, plans, strict=True)]

    async def _shared_prefix(self, num_requests: int, rng: random.Random) -> list[BenchRequest]:
        cutter = self._text_cutter()
        await cutter.calibrate()
        prefix_starts = [rng.randrange(cutter.num_words) for _ in range(self.config.num_prefix_groups)]
        plans = [(rng.randrange(len(prefix_starts)), self.config.input_len.sample(rng),
                  self._output_len.sample(rng), rng.randrange(cutter.num_words)) for _ in range(num_requests)]
        prefixes = await _gather_bounded(cutter.cut(self.config.prefix_len, s) for s in prefix_starts)
        questions = await _gather_bounded(cutter.cut(n_in, start) for _, n_in, _, start in plans)
        requests = []
        for (group, _, n_out, _), (question, question_tokens) in zip(plans, questions, strict=True):
            prefix, prefix_tokens = prefixes[group]
            messages = (("system", prefix), ("user", question))
            requests.append(BenchRequest(messages, n_out, prefix_tokens + question_tokens, "shared-prefix"))
        return requests

    async def _dataset(self, num_requests: int, rng: random.Random) -> list[BenchRequest]:
        # Each entry is used once before any repeats, in a fresh shuffled order per pass.
        picks: list[int] = []
        while len(picks) < num_requests:
            order = list(range(len(self._entries)))
            rng.shuffle(order)
            picks.extend(order[: num_requests - len(picks)])
        fixed_outputs = [self.config.output_len.sample(rng) if self.config.output_len else None for _ in picks]
        await self._count_entries(sorted(set(picks)))
        requests = []
        for index, fixed in zip(picks, fixed_outputs, strict=True):
            entry = self._entries[index]
            num_input, num_reference = self._entry_tokens[index]
            max_tokens = fixed or entry.max_tokens or num_reference or DEFAULT_OUTPUT_LEN.sample(rng)
            requests.append(BenchRequest(entry.messages, max(1, max_tokens), num_input))
        return requests

    async def _count_entries(self, indices: list[int]) -> None:
        todo = [i for i in indices if i not in self._entry_tokens]

        async def count(i: int) -> tuple[int, int | None]:
            entry = self._entries[i]
            reference = entry.reference_output
            return await self._counter.count(entry.text), (await self._counter.count(reference)
                                                           if reference else None)

        for i, counts in zip(todo, await _gather_bounded(count(i) for i in todo), strict=True):
            self._entry_tokens[i] = counts

    def _text_cutter(self) -> TextCutter:
        assert self._cutter is not None  # every workload but dataset has one
        return self._cutter

    def _warn_if_too_long(self, requests: list[BenchRequest]) -> None:
        limit = self._counter.max_model_len
        if limit is None:
            return
        too_long = sum(1 for r in requests if (r.num_input_tokens or 0) + r.max_tokens > limit)
        if too_long:
            log.warning("%d of %d requests ask for more than the server's max_model_len (%d) "
                        "prompt + output tokens; expect 400s", too_long, len(requests), limit)


async def build_point(index: int, point: LoadPoint, load: LoadConfig,
                      workload: Workload) -> tuple[list[BenchRequest], list[float] | None]:
    """The requests of sweep point ``index`` and, for open loop, their send times; seeded per
    point (the capacity planner replays exactly these).

    Each point gets its own prompts, so a server's prefix cache cannot carry one
    point's prompts into the next.
    """
    arrivals = None
    if point.mode is LoadMode.OPEN_LOOP:
        assert point.rate_per_s is not None
        arrivals = arrival_times_s(point.rate_per_s, load, random.Random(f"{load.seed}:{index}:schedule"))
        num_prompts = len(arrivals)
    elif load.num_requests is not None and not load.warmup_s:
        num_prompts = load.warmup_requests + load.num_requests
    else:
        num_prompts = load.prompt_pool_size
    requests = await workload.build(max(1, num_prompts), random.Random(f"{load.seed}:{index}:prompts"))
    return requests, arrivals


async def _gather_bounded(awaitables: Iterable[Awaitable[T]], limit: int = MAX_CONCURRENT_COUNTS) -> list[T]:
    semaphore = asyncio.Semaphore(limit)

    async def one(awaitable: Awaitable[T]) -> T:
        async with semaphore:
            return await awaitable

    return list(await asyncio.gather(*(one(a) for a in awaitables)))
