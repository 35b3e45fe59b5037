"""Seam types between the server and the engine.

``SamplingParams`` is parsed once at the edge and frozen: the engine never
re-checks it. ``RequestOutput`` is what the engine streams back for a request.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from servewise.errors import InvalidRequestError

# Bounds on user input (OpenAI's where it has one, a generous cap where it has none).
MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_SEED = 2**63 - 1
MAX_GRAMMAR_SOURCE_CHARS = 1024 * 1024  # the edge enforces a smaller, configurable limit


def _check(cond: bool, message: str, param: str) -> None:
    if not cond:
        raise InvalidRequestError(message, param=param)


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class GrammarKind(str, enum.Enum):
    """What a GrammarSpec's source text is."""

    JSON_SCHEMA = "json_schema"  # a JSON schema (JSON text)
    JSON_OBJECT = "json_object"  # any JSON object; the source is empty
    REGEX = "regex"
    CHOICE = "choice"  # one of several strings; the source is a JSON list of them
    EBNF = "ebnf"  # a GBNF/EBNF grammar whose start rule is `root`
    STRUCTURAL_TAG = "structural_tag"  # an xgrammar structural tag (JSON text); tool calls use it


@dataclass(frozen=True)
class GrammarSpec:
    """A constraint on the output, as parsed at the edge. Equal specs share one compiled grammar."""

    kind: GrammarKind
    source: str  # canonical text: compact JSON for schemas, choices and tags; the pattern or grammar as given

    def __post_init__(self) -> None:
        _check(isinstance(self.kind, GrammarKind), "unknown grammar kind", "response_format")
        _check(isinstance(self.source, str) and len(self.source) <= MAX_GRAMMAR_SOURCE_CHARS,
               f"a grammar or schema may hold at most {MAX_GRAMMAR_SOURCE_CHARS} characters", "response_format")

    @property
    def cache_key(self) -> tuple[str, str]:
        return self.kind.value, self.source


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. Validated at construction (InvalidRequestError)."""

    n: int = 1  # completions per prompt; siblings share the prompt's KV blocks
    max_tokens: int | None = 16  # output tokens at most; None = up to the context length
    min_tokens: int = 0  # eos and stop tokens are suppressed until this many were generated
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass in (0, 1]
    top_k: int | None = None  # keep the k most likely tokens; None = all
    min_p: float = 0.0  # drop tokens below min_p × p(most likely)
    repetition_penalty: float = 1.0  # HF-style, on prompt and output tokens; 1 = off
    presence_penalty: float = 0.0  # OpenAI-style, on output tokens
    frequency_penalty: float = 0.0  # OpenAI-style, on output tokens
    # token id -> bias added to its logit, in [-100, 100]; frozen as a sorted tuple of pairs
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None  # same seed + same prompt = same tokens, whatever the batch
    logprobs: int | None = None  # None = no logprobs; k = the sampled token's plus the top k
    stop: tuple[str, ...] = ()  # stop strings, excluded from the output
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # Constrain the output to a grammar (structured outputs, tool calls); None = free text.
    grammar: GrammarSpec | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.n, int) and 1 <= self.n <= MAX_N, f"n must be an integer in [1, {MAX_N}]", "n")
        _check(self.max_tokens is None or (isinstance(self.max_tokens, int) and self.max_tokens >= 1),
               "max_tokens must be an integer ≥ 1", "max_tokens")
        _check(isinstance(self.min_tokens, int) and self.min_tokens >= 0, "min_tokens must be ≥ 0", "min_tokens")
        _check(self.max_tokens is None or self.min_tokens <= self.max_tokens,
               "min_tokens must not exceed max_tokens", "min_tokens")
        _check(_finite(self.temperature) and 0.0 <= self.temperature <= 10.0,
               "temperature must be in [0, 10]", "temperature")
        _check(_finite(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]", "top_p")
        _check(self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 1),
               "top_k must be ≥ 1 (or omitted)", "top_k")
        _check(_finite(self.min_p) and 0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]", "min_p")
        _check(_finite(self.repetition_penalty) and 0.0 < self.repetition_penalty <= 10.0,
               "repetition_penalty must be in (0, 10]", "repetition_penalty")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_finite(value) and -2.0 <= value <= 2.0, f"{name} must be in [-2, 2]", name)
        _check(len(self.logit_bias) <= MAX_LOGIT_BIAS_ENTRIES,
               f"logit_bias may hold at most {MAX_LOGIT_BIAS_ENTRIES} entries", "logit_bias")
        for token_id, bias in self.logit_bias:
            _check(isinstance(token_id, int) and token_id >= 0, "logit_bias keys must be token ids ≥ 0", "logit_bias")
            _check(_finite(bias) and -100.0 <= bias <= 100.0, "logit_bias values must be in [-100, 100]",
                   "logit_bias")
        _check(self.seed is None or (isinstance(self.seed, int) and -MAX_SEED <= self.seed <= MAX_SEED),
               "seed must be a 64-bit integer", "seed")
        _check(self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_TOP_LOGPROBS),
               f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]", "logprobs")
        _check(len(self.stop) <= MAX_STOP_STRINGS, f"at most {MAX_STOP_STRINGS} stop strings", "stop")
        for s in self.stop:
            _check(isinstance(s, str) and 0 < len(s) <= MAX_STOP_STRING_CHARS,
                   f"stop strings must be non-empty and at most {MAX_STOP_STRING_CHARS} characters", "stop")
        _check(len(self.stop_token_ids) <= MAX_STOP_TOKEN_IDS, f"at most {MAX_STOP_TOKEN_IDS} stop token ids",
               "stop_token_ids")
        for t in self.stop_token_ids:
            _check(isinstance(t, int) and t >= 0, "stop_token_ids must be token ids ≥ 0", "stop_token_ids")
        if self.grammar is not None:
            # The grammar decides when eos is allowed: suppressing or ignoring it could leave no token to pick.
            _check(not self.ignore_eos, "ignore_eos cannot be combined with structured outputs", "ignore_eos")
            _check(self.min_tokens == 0, "min_tokens cannot be combined with structured outputs", "min_tokens")

    @staticmethod
    def bias_from_mapping(bias: Mapping[int, float] | None) -> tuple[tuple[int, float], ...]:
        return tuple(sorted((int(k), float(v)) for k, v in (bias or {}).items()))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def max_stop_chars(self) -> int:
        return max((len(s) for s in self.stop), default=0)

    def check_token_ids(self, vocab_size: int) -> None:
        """Token ids in the params must exist in the model's vocabulary."""
        for token_id, _ in self.logit_bias:
            _check(token_id < vocab_size, f"logit_bias token id {token_id} is outside the vocabulary "
                   f"(size {vocab_size})", "logit_bias")
        for t in self.stop_token_ids:
            _check(t < vocab_size, f"stop token id {t} is outside the vocabulary (size {vocab_size})",
                   "stop_token_ids")


class FinishReason(str, enum.Enum):
    STOP = "stop"  # eos, a stop token or a stop string
    LENGTH = "length"  # max_tokens or the context length
    ABORT = "abort"  # the client went away or the request was cancelled
    ERROR = "error"  # the engine failed this request (see RequestOutput.error)
    DRAIN = "drain"  # the server shut down before the request finished


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability and the top alternatives."""

    token_id: int
    logprob: float  # natural log of the model's probability (before sampling transforms)
    top: tuple[tuple[int, float], ...]  # (token id, logprob) best first; len = SamplingParams.logprobs


@dataclass
class RequestTimings:
    """Monotonic timestamps (time.monotonic(), seconds) of one request's life."""

    arrival_s: float  # accepted by the engine
    first_scheduled_s: float | None = None  # first step that computed any of its tokens
    first_token_s: float | None = None  # first output token sampled
    last_token_s: float | None = None
    finished_s: float | None = None
    num_preemptions: int = 0
    # Share of engine step time attributed to this request (prefill / decode), seconds.
    prefill_compute_s: float = 0.0
    decode_compute_s: float = 0.0


@dataclass
class CompletionOutput:
    """What changed in one completion (of n) since the previous RequestOutput."""

    index: int  # 0 ≤ index < n
    text: str  # new text (delta); stop strings are never part of it
    token_ids: list[int]  # new token ids (delta)
    logprobs: list[TokenLogprob] | None  # one per new token when requested
    num_output_tokens: int  # cumulative
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    # Monotonic emission time of each new token (same length as token_ids).
    token_times_s: list[float] = field(default_factory=list)


@dataclass
class RequestOutput:
    """Streamed by the engine for a request; ``finished`` on the last one."""

    request_id: str
    outputs: list[CompletionOutput]
    finished: bool
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served from the prefix cache (first completion)
    timings: RequestTimings
    prompt_token_ids: list[int] | None = None  # only on the first output
    error: str | None = None  # set with FinishReason.ERROR
