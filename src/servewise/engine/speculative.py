"""n-gram speculative decoding (prompt lookup): drafts from the sequence's own tokens.

Proposal (``NgramIndex``): the longest suffix n-gram of the sequence (prompt + output), n from
``prompt_lookup_max`` down to ``prompt_lookup_min``, that occurred before; the draft is the up
to k tokens that followed its latest earlier occurrence. An index of each n-gram's latest end
position, extended as tokens arrive, makes a proposal O(max_n) per step.

Verification is one batched step: the scheduler computes the sequence's last token and its
draft (1 + k positions; the KV cache holds them, and the K/V of rejected positions are simply
overwritten later), the model runner returns logits for each of those positions, and
``Sampler.verify`` accepts the longest prefix the target would have sampled, plus one token.
``num_computed_tokens`` then counts the accepted positions only, so the prefix cache only
ever registers blocks of accepted tokens.

When a sequence drafts, and how many tokens (``draft_length``, a pure function of ``s(T)``, the
seconds of a decode step of ``T`` tokens, and of the sequence's acceptance ``α``, the chance that
a draft token is accepted once the ones before it were):

- a k-token draft emits ``E(k) = 1 + α + … + α^k`` tokens in expectation and makes the step
  ``s(T + k)``. A step that emits ``N`` tokens (one per running sequence, plus the drafts given
  so far) for ``T`` decode tokens gets ``k* = argmax_k (N - 1 + E(k)) / s(T + k)``, among the k
  whose extra tokens ``E(k) - 1`` are worth ``min_speedup`` × what the longer step costs
  (``N · (s(T + k) - s(T)) / s(T)`` tokens at the step's current rate). ``s`` is measured
  (``DecodeStepCosts``: decode steps by size; the fitted ``a + c·T`` where a size was not
  seen). Large batches turn drafting off by themselves (k extra rows slow every sequence, one
  gains), and so does a low ``α``, or steps whose extra rows are dear (kernels that read the
  weights once per step make them cheap, and drafts longer);
- never while more than ``max_num_running`` sequences run;
- ``α`` is counted per sequence and per match length n (decayed counts of accepted / tested
  draft positions, starting from the engine-wide rate for that n): a 3-gram match predicts the
  next tokens far better than a 1-gram one. A sequence that stopped drafting tries one draft
  token every ``probe_interval_steps`` steps, to notice when its text turns repetitive, unless
  even a draft that is always accepted would not pay (a device whose verify steps cannot use
  the decode fast path: CUDA graphs replay single-token decodes only);
- never when its logits depend on the tokens being verified: a grammar (its matcher would
  have to accept, then roll back, each draft token), repetition/presence/frequency penalties,
  min_tokens not reached yet;
- the draft is cut so the sequence cannot pass max_tokens or the context length.

Not modelled: prefill chunks sharing the step (they make drafts relatively cheaper), the
context length (attention grows with it; the averages lag), drafts from other sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from servewise.config import SpeculativeConfig
from servewise.engine.model_runner import RunnerOutput
from servewise.engine.request import Request
from servewise.engine.sampler import Sampler
from servewise.engine.scheduler import is_decoding
from servewise.slo.cost_model import StepCostModel, StepTiming
from servewise.types import TokenLogprob

ACCEPTANCE_DECAY = 0.8  # per verification: acceptance remembers the last ~5 drafts
INITIAL_ACCEPTANCE = 0.6  # the engine-wide α before any draft was verified
Emitted = dict[int, list[tuple[int, TokenLogprob | None]]]  # id(request) -> tokens emitted this step


class NgramIndex:
    """The latest end position of every n-gram (min_n ≤ n ≤ max_n) of a growing token list."""

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self._latest: dict[tuple[int, ...], int] = {}
        self._num_indexed = 0  # n-grams ending before this position are indexed

    def propose(self, token_ids: Sequence[int], k: int) -> tuple[list[int], int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest matching suffix,
        and that suffix's length n; ([], 0) when no suffix of min_n tokens or more occurred before."""
        last = len(token_ids) - 1
        self._extend(token_ids, last)  # the suffix itself (ending at `last`) must not match itself
        for n in range(min(self.max_n, last), self.min_n - 1, -1):
            end = self._latest.get(tuple(token_ids[last - n + 1:last + 1]))
            if end is not None:
                return list(token_ids[end + 1:end + 1 + k]), n
        return [], 0

    def _extend(self, token_ids: Sequence[int], stop: int) -> None:
        for end in range(self._num_indexed, stop):
            for n in range(self.min_n, min(self.max_n, end + 1) + 1):
                self._latest[tuple(token_ids[end - n + 1:end + 1])] = end
        self._num_indexed = max(self._num_indexed, stop)


def expected_tokens(acceptance: float, num_draft_tokens: int) -> float:
    """Tokens a verify step emits in expectation: the accepted prefix of the draft, plus one."""
    return sum(acceptance ** i for i in range(num_draft_tokens + 1))


def draft_length(acceptance: float, max_tokens: int, step_s: Callable[[int], float], num_step_tokens: int,
                 num_step_emitted: float, min_speedup: float) -> int:
    """The draft length that maximises the step's expected tokens per second (module docstring), among
    those whose extra tokens are worth ``min_speedup`` × what their rows cost the step; 0 when none is.
    step_s(T): seconds of a decode step of T tokens; num_step_tokens: decode tokens the step computes so
    far (running decodes and drafts already given); num_step_emitted: tokens it emits so far, expected."""
    base_s = step_s(num_step_tokens)
    if not base_s > 0:  # no usable step time yet (a fit can put every coefficient at 0): no draft
        return 0
    best_k, best_rate = 0, num_step_emitted / base_s
    for k in range(1, max_tokens + 1):
        extra_s = step_s(num_step_tokens + k) - base_s
        gain = expected_tokens(acceptance, k) - 1  # tokens the draft adds to the step
        price = num_step_emitted * extra_s / base_s  # tokens the longer step costs, at the current rate
        rate = (num_step_emitted + gain) / (base_s + extra_s)
        if gain >= min_speedup * price and rate > best_rate:
            best_k, best_rate = k, rate
    return best_k


@dataclass
class Acceptance:
    """α, the chance a draft token is accepted when the ones before it were: decayed counts."""

    num_accepted: float
    num_tested: float

    def observe(self, num_draft_tokens: int, num_accepted_tokens: int) -> None:
        rejected = 1 if num_accepted_tokens < num_draft_tokens else 0
        self.num_accepted = ACCEPTANCE_DECAY * self.num_accepted + num_accepted_tokens
        self.num_tested = ACCEPTANCE_DECAY * self.num_tested + num_accepted_tokens + rejected

    @property
    def rate(self) -> float:
        return self.num_accepted / self.num_tested if self.num_tested > 0 else 0.0

    def prior(self, weight: float = 2.0) -> Acceptance:
        """This rate, worth ``weight`` tested positions: where a new sequence starts."""
        return Acceptance(self.rate * weight, weight)


def can_speculate(request: Request) -> bool:
    """Whether the sampler can verify a draft for this request: its logits do not depend on the draft."""
    p = request.params
    return (request.grammar is None and p.repetition_penalty == 1.0 and not p.presence_penalty
            and not p.frequency_penalty and request.num_output_tokens >= p.min_tokens)


def max_draft_tokens(request: Request, k: int) -> int:
    """k, cut so that draft + the bonus token cannot pass max_tokens or the context length."""
    room = request.max_total_tokens - request.num_tokens
    if request.params.max_tokens is not None:
        room = min(room, request.params.max_tokens - request.num_output_tokens)
    return max(min(k, room - 1), 0)


class DecodeStepCosts:
    """Seconds of a decode step of T tokens (no prefill), for the small T that drafting makes: the
    measured average where T was seen, else the nearest measured T below plus the fitted cost per decode
    token (``cost_model``), else the fitted cost. Kernels need not be linear in the rows (one that takes
    rows in pairs makes 2 rows almost as cheap as 1 and 3 nearly as dear as 4); the draft length follows."""

    MAX_TOKENS = 32  # larger steps never draft
    WEIGHT = 0.1  # of the latest step in a running average

    def __init__(self, cost_model: StepCostModel) -> None:
        self.cost_model = cost_model
        self._mean_s: dict[int, float] = {}

    def observe(self, step: StepTiming) -> None:
        tokens = step.num_tokens
        if step.num_prefill_tokens or not 0 < tokens <= self.MAX_TOKENS:
            return
        old = self._mean_s.get(tokens)
        self._mean_s[tokens] = step.duration_s if old is None else old + self.WEIGHT * (step.duration_s - old)

    def step_s(self, num_tokens: int) -> float:
        if num_tokens in self._mean_s:
            return self._mean_s[num_tokens]
        cost = self.cost_model.cost()
        below = max((t for t in self._mean_s if t < num_tokens), default=None)
        if below is None:
            return cost.step_s(0, num_tokens)
        return self._mean_s[below] + cost.decode_s_per_token * (num_tokens - below)


@dataclass
class _SequenceState:
    index: NgramIndex
    acceptance: dict[int, Acceptance]  # by the length n of the n-gram a draft was found with
    num_steps_off: int = 0  # decode steps since it last drafted
    draft_n: int = 0  # n of its last draft


class NoSpeculation:
    """Speculation off: no drafts, nothing to observe."""

    def propose(self, running: Sequence[Request]) -> None:
        pass

    def observe(self, request: Request, num_draft_tokens: int, num_accepted_tokens: int) -> None:
        pass

    def observe_step(self, step: StepTiming) -> None:
        pass


class NgramSpeculator:
    """Sets each running sequence's draft before the step is scheduled; learns acceptance from the
    verifications and the cost of draft tokens from ``cost_model`` (the scheduler's, which the engine
    feeds with its steps). Owned by the engine loop thread."""

    def __init__(self, config: SpeculativeConfig, cost_model: StepCostModel) -> None:
        self.config = config
        self.costs = DecodeStepCosts(cost_model)
        # engine-wide, by n-gram length: where new sequences start (longer matches are accepted more often)
        self.acceptance = {n: Acceptance(INITIAL_ACCEPTANCE, 1.0)
                           for n in range(config.prompt_lookup_min, config.prompt_lookup_max + 1)}
        self._states: dict[str, _SequenceState] = {}

    def propose(self, running: Sequence[Request]) -> None:
        states: dict[str, _SequenceState] = {}  # sequences that left the batch are forgotten
        if len(running) > self.config.max_num_running:
            for request in running:
                request.draft_token_ids = []
            self._states = states
            return
        num_step_tokens = sum(1 for r in running if is_decoding(r))
        num_step_emitted = float(num_step_tokens)
        for request in running:
            state = self._states.get(request.request_id) or _SequenceState(
                NgramIndex(self.config.prompt_lookup_min, self.config.prompt_lookup_max),
                {n: a.prior() for n, a in self.acceptance.items()})
            states[request.request_id] = state
            request.draft_token_ids = self._draft(request, state, num_step_tokens, num_step_emitted)
            if request.draft_token_ids:
                num_step_tokens += len(request.draft_token_ids)
                num_step_emitted += expected_tokens(state.acceptance[state.draft_n].rate,
                                                    len(request.draft_token_ids)) - 1
        self._states = states

    def _draft(self, request: Request, state: _SequenceState, num_step_tokens: int, num_step_emitted: float
               ) -> list[int]:
        if not (is_decoding(request) and can_speculate(request)):
            return []
        proposal, n = state.index.propose(request.token_ids,
                                          max_draft_tokens(request, self.config.num_speculative_tokens))
        k = draft_length(state.acceptance[n].rate, len(proposal), self.costs.step_s, num_step_tokens,
                         num_step_emitted, self.config.min_speedup) if proposal else 0
        if k == 0 and proposal and state.num_steps_off >= self.config.probe_interval_steps and draft_length(
                1.0, len(proposal), self.costs.step_s, num_step_tokens, num_step_emitted, self.config.min_speedup):
            k = 1  # a probe, where a draft could pay at all: one token tells whether acceptance recovered
        state.num_steps_off = 0 if k else state.num_steps_off + 1
        state.draft_n = n
        return proposal[:k]

    def observe(self, request: Request, num_draft_tokens: int, num_accepted_tokens: int) -> None:
        """A verification of ``num_draft_tokens`` accepted ``num_accepted_tokens`` of them."""
        state = self._states.get(request.request_id)
        if num_draft_tokens == 0 or state is None:
            return
        self.acceptance[state.draft_n].observe(num_draft_tokens, num_accepted_tokens)
        state.acceptance[state.draft_n].observe(num_draft_tokens, num_accepted_tokens)

    def observe_step(self, step: StepTiming) -> None:
        """An engine step ended (what a decode step of its size costs)."""
        self.costs.observe(step)


def create_speculator(config: SpeculativeConfig, cost_model: StepCostModel) -> NgramSpeculator | NoSpeculation:
    return NgramSpeculator(config, cost_model) if config.enabled else NoSpeculation()


def sample_with_drafts(sampler: Sampler, out: RunnerOutput) -> Emitted:
    """One token per plain request (batched), the accepted draft prefix and one more token per request
    that verifies a draft (``Sampler.verify``)."""
    requests, drafts = out.sample_requests, out.drafts
    starts = [0]  # first logits row of each request
    for draft in drafts[:-1]:
        starts.append(starts[-1] + 1 + len(draft))
    plain = [i for i, d in enumerate(drafts) if not d]
    logits = out.logits if len(plain) == len(requests) else out.logits.index_select(
        0, torch.tensor([starts[i] for i in plain], dtype=torch.long))
    emitted: Emitted = {}
    if plain:
        result = sampler.sample(logits, [requests[i] for i in plain])
        for i, token, logprob in zip(plain, result.token_ids, result.logprobs, strict=True):
            emitted[id(requests[i])] = [(token, logprob)]
    for i, draft in enumerate(drafts):
        if draft:
            rows = out.logits[starts[i]:starts[i] + 1 + len(draft)]
            emitted[id(requests[i])] = sampler.verify(rows, requests[i], draft)
    return emitted
