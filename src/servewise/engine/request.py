"""The engine's view of one sequence (one of the ``n`` completions of a client request)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from servewise.types import FinishReason, RequestTimings, SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from servewise.engine.structured import GrammarState


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # queued, never scheduled or preempted (then num_computed_tokens == 0)
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    """Mutable state owned by the engine loop thread; nothing else touches it."""

    request_id: str  # unique per sequence: "<group_id>" for n == 1, "<group_id>#<index>" otherwise
    group_id: str  # the client's request id
    index: int  # completion index in [0, n)
    prompt_token_ids: list[int]
    params: SamplingParams
    timings: RequestTimings
    eos_token_ids: frozenset[int]
    max_total_tokens: int  # prompt + output may not exceed this (context length)
    generator: torch.Generator  # per-sequence RNG: same seed -> same samples whatever the batch
    priority: int = 0  # lower runs first under priority policies; FCFS ignores it
    deadline_s: float | None = None  # monotonic time its first token is due (SLO), if any
    tpot_s: float | None = None  # its SLO class's time-per-output-token target, if any (sizes the step budget)
    # The sequence's own grammar matcher when params.grammar is set; it has accepted exactly the output tokens.
    grammar: GrammarState | None = None
    # token ids of prompt + output so far; the first num_prompt_tokens are the prompt
    token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at first admission
    # Speculative tokens proposed to follow token_ids, verified in the next step (engine/speculative.py);
    # never part of token_ids, so a rejected one needs no rollback beyond num_computed_tokens.
    draft_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    error: str | None = None
    block_ids: list[int] = field(default_factory=list)  # KV blocks, in position order
    # full blocks already registered in the prefix cache, and the hash chain up to them
    num_hashed_blocks: int = 0
    block_hashes: list[bytes] = field(default_factory=list)
    new_logprobs: list[TokenLogprob] = field(default_factory=list)  # since the last output
    num_emitted_tokens: int = 0  # output tokens already reported to the client
    final_output_sent: bool = False  # the output carrying finish_reason went out

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids):]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
