"""Grammar-constrained decoding with xgrammar: compiled grammars, per-request matchers, the batched mask.

- Compiling: ``GrammarCompiler`` turns a ``GrammarSpec`` into an xgrammar ``CompiledGrammar`` against
  the model's own vocabulary (each token's raw bytes from our tokenizer; nothing from a hub). Compiles
  run in the compiler's own small thread pool and land in an LRU cache keyed by the spec's canonical
  text; concurrent requests for one spec share one compile. ``AsyncEngine`` awaits the compile before it
  queues a request, so the engine loop thread never compiles.
- Matching: each constrained sequence owns a ``GrammarState``. Invariant: its matcher has accepted
  exactly the sequence's output tokens. Preemption keeps output tokens (only the KV is recomputed), so
  the state stays valid; should the two ever differ (tokens rolled back), ``sync`` replays the output.
- Masking: ``GrammarMasker.apply`` fills one bitmask row per constrained row of a step and sets the
  disallowed logits of those rows to -inf, on the logits' device. A step without a constrained row
  costs one scan of the batch's requests.

The masks are deterministic functions of a sequence's own output, so seeded sampling still gives the
same tokens whatever else is in the batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import xgrammar as xgr

from servewise.config import StructuredOutputConfig
from servewise.engine import llguidance_backend
from servewise.engine.schema_support import needs_llguidance, unenforceable_keywords
from servewise.errors import InvalidRequestError
from servewise.types import GrammarKind, GrammarSpec

if TYPE_CHECKING:
    from servewise.engine.request import Request

# xgrammar prefixes C++ errors with "[hh:mm:ss] /path/file.cc:123: "; users get the rest.
_CPP_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


class TokenBytes(Protocol):
    vocab_size: int
    special_token_ids: frozenset[int]

    def token_bytes(self, token_id: int) -> bytes: ...


def tokenizer_info(tokenizer: TokenBytes, vocab_size: int, stop_token_ids: Iterable[int]) -> xgr.TokenizerInfo:
    """xgrammar's view of our vocabulary: raw bytes per token id; special tokens are empty, so no
    grammar can spell them (stop tokens are allowed by id where the grammar may end).

    vocab_size: the width of the model's logits (may exceed the tokenizer's; extra ids are never allowed)."""
    num_tokens = min(tokenizer.vocab_size, vocab_size)
    special = tokenizer.special_token_ids
    encoded = [b"" if i in special else tokenizer.token_bytes(i) for i in range(num_tokens)]
    return xgr.TokenizerInfo(encoded, xgr.VocabType.RAW, vocab_size=vocab_size,
                             stop_token_ids=sorted(set(stop_token_ids)))


@dataclass(frozen=True)
class CompiledGrammar:
    """A compiled spec, ready to make matchers from."""

    spec: GrammarSpec
    grammar: xgr.CompiledGrammar | str  # xgrammar's, or an llguidance grammar (engine/schema_support.py)
    compile_s: float  # how long compiling took (the first time)
    vocab_size: int  # width of the logits it masks
    ll_tokenizer: Any = None  # the llguidance tokenizer, for llguidance grammars

    @property
    def backend(self) -> str:
        return "llguidance" if isinstance(self.grammar, str) else "xgrammar"

    def new_matcher(self, stop_token_ids: list[int]) -> Any:
        if isinstance(self.grammar, str):
            return llguidance_backend.LLGuidanceMatcher(self.ll_tokenizer, self.grammar)
        return xgr.GrammarMatcher(self.grammar, override_stop_tokens=stop_token_ids)


@dataclass(frozen=True)
class CompileResult:
    compiled: CompiledGrammar
    cache_hit: bool  # served from the cache (or joined a compile already under way)


def _clean_error(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return _CPP_PREFIX.sub("", lines[0] if lines else type(exc).__name__)[:500]


class GrammarCompiler:
    """Compiles specs in a thread pool, caches the results (LRU), bounds how long a caller waits."""

    def __init__(self, tokenizer: TokenBytes, vocab_size: int, stop_token_ids: Iterable[int],
                 config: StructuredOutputConfig) -> None:
        self.config = config
        self.vocab_size = vocab_size
        self._tokenizer = tokenizer
        self._stop_ids = sorted(set(stop_token_ids))
        info = tokenizer_info(tokenizer, vocab_size, self._stop_ids)
        self._xgr = xgr.GrammarCompiler(info, max_threads=config.compile_threads, cache_enabled=False)
        self._ll_tokenizer: Any = None  # built on the first schema that needs llguidance
        self._pool = concurrent.futures.ThreadPoolExecutor(config.compile_threads, thread_name_prefix="grammar")
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], concurrent.futures.Future[CompiledGrammar]] = OrderedDict()

    def submit(self, spec: GrammarSpec) -> tuple[concurrent.futures.Future[CompiledGrammar], bool]:
        """The compile of ``spec`` (started now unless cached or under way) and whether it was."""
        key = spec.cache_key
        with self._lock:
            future = self._cache.get(key)
            if future is not None:
                self._cache.move_to_end(key)
                return future, True
            future = self._pool.submit(self._compile, spec)
            self._cache[key] = future
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        future.add_done_callback(lambda f: self._forget_failure(key, f))
        return future, False

    def compile(self, spec: GrammarSpec) -> CompileResult:
        """Blocking compile (offline use); InvalidRequestError if the spec is bad or too slow to compile."""
        future, hit = self.submit(spec)
        try:
            return CompileResult(future.result(timeout=self.config.compile_timeout_s), hit)
        except concurrent.futures.TimeoutError:
            raise self.timeout_error() from None

    async def compile_async(self, spec: GrammarSpec) -> CompileResult:
        """Awaits the compile from an event loop, never blocking it; InvalidRequestError as ``compile``."""
        future, hit = self.submit(spec)
        try:
            # shield: a caller that gives up must not cancel a compile other requests may share
            compiled = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                              self.config.compile_timeout_s)
        except asyncio.TimeoutError:
            raise self.timeout_error() from None
        return CompileResult(compiled, hit)

    def timeout_error(self) -> InvalidRequestError:
        return InvalidRequestError(f"the grammar or schema did not compile within {self.config.compile_timeout_s:g} s; "
                                   "simplify it", param="response_format", code="grammar_too_complex")

    @property
    def num_cached(self) -> int:
        return len(self._cache)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _forget_failure(self, key: tuple[str, str], future: concurrent.futures.Future[CompiledGrammar]) -> None:
        if future.cancelled() or future.exception() is not None:
            with self._lock:
                if self._cache.get(key) is future:
                    del self._cache[key]

    def _compile(self, spec: GrammarSpec) -> CompiledGrammar:
        start = time.perf_counter()
        grammar: xgr.CompiledGrammar | str
        try:
            if spec.kind is GrammarKind.JSON_SCHEMA and self._use_llguidance(spec.source):
                grammar = llguidance_backend.compile_json_schema(self._llguidance(), spec.source)
            else:
                grammar = self._compile_xgr(spec)
        except InvalidRequestError:
            raise
        except Exception as exc:  # xgrammar reports bad schemas, patterns and grammars as RuntimeError
            raise InvalidRequestError(f"invalid {spec.kind.value.replace('_', ' ')}: {_clean_error(exc)}",
                                      param="response_format") from None
        return CompiledGrammar(spec, grammar, time.perf_counter() - start, self.vocab_size,
                               self._ll_tokenizer if isinstance(grammar, str) else None)

    def _use_llguidance(self, source: str) -> bool:
        schema = json.loads(source)
        refused = unenforceable_keywords(schema)
        if refused:
            raise InvalidRequestError(f"the JSON schema uses {', '.join(refused)}, which structured outputs cannot "
                                      "enforce; remove it", param="response_format", code="unsupported_schema")
        return needs_llguidance(schema)

    def _llguidance(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                self._ll_tokenizer = llguidance_backend.ll_tokenizer(self._tokenizer, self.vocab_size, self._stop_ids)
            return self._ll_tokenizer

    def _compile_xgr(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        kind, source = spec.kind, spec.source
        # Compact JSON (no free whitespace): small models otherwise pad JSON with endless blank lines.
        if kind is GrammarKind.JSON_SCHEMA:
            return self._xgr.compile_json_schema(source, any_whitespace=False, strict_mode=True)
        if kind is GrammarKind.JSON_OBJECT:
            return self._xgr.compile_json_schema('{"type": "object"}', any_whitespace=False, strict_mode=False)
        if kind is GrammarKind.REGEX:
            return self._xgr.compile_regex(source)
        if kind is GrammarKind.CHOICE:
            return self._xgr.compile_grammar(choice_ebnf(json.loads(source)))
        if kind is GrammarKind.EBNF:
            return self._xgr.compile_grammar(source)
        return self._xgr.compile_structural_tag(source)


def choice_ebnf(choices: Sequence[str]) -> str:
    """``root ::= "a" | "b"`` with each choice escaped as an EBNF string literal."""
    return "root ::= " + " | ".join(_ebnf_literal(c) for c in choices)


def _ebnf_literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable() and ord(ch) < 0x10000:
            out.append(ch)
        else:
            out.append(f"\\U{ord(ch):08x}" if ord(ch) >= 0x10000 else f"\\u{ord(ch):04x}")
    return '"' + "".join(out) + '"'


class GrammarState:
    """One sequence's matcher. Invariant: it has accepted exactly the sequence's output tokens."""

    def __init__(self, compiled: CompiledGrammar, stop_token_ids: Iterable[int]) -> None:
        self.compiled = compiled
        self._stop_ids = sorted(set(stop_token_ids))
        self.matcher = compiled.new_matcher(self._stop_ids)
        self.vocab_size = compiled.vocab_size
        self.num_accepted_tokens = 0

    def accept(self, token_id: int) -> bool:
        ok = bool(self.matcher.accept_token(token_id))
        if ok:
            self.num_accepted_tokens += 1
        return ok

    def sync(self, output_token_ids: Sequence[int]) -> None:
        """Make the matcher correspond to ``output_token_ids`` (replaying them) if it does not."""
        if self.num_accepted_tokens == len(output_token_ids):
            return
        self.matcher.reset()
        self.num_accepted_tokens = 0
        for token_id in output_token_ids:
            if not self.accept(token_id):
                raise RuntimeError(f"grammar state cannot replay output token {token_id}")

    def fill(self, bitmask: torch.Tensor, row: int) -> bool:
        """Write the allowed next tokens into ``bitmask[row]``; False if every token is allowed."""
        return bool(self.matcher.fill_next_token_bitmask(bitmask, row))

    @property
    def is_terminated(self) -> bool:
        return bool(self.matcher.is_terminated())

    def must_stop(self) -> bool:
        """The output so far is complete and nothing but a stop token may follow: finish now."""
        if self.matcher.is_terminated():
            return True
        if not self.matcher.is_completed():
            return False
        mask = xgr.allocate_token_bitmask(1, self.vocab_size)
        self.matcher.fill_next_token_bitmask(mask, 0)
        allowed = unpack_bitmask(mask, self.vocab_size)[0].nonzero().flatten().tolist()
        return set(allowed) <= set(self._stop_ids)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, ceil(V/32)] int32 -> [rows, V] bool, True = allowed (bit j of word w is token 32w + j)."""
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


class GrammarMasker:
    """Masks the logits of a step's constrained rows; reuses one bitmask buffer across steps."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._bitmask = xgr.allocate_token_bitmask(8, vocab_size)

    def apply(self, logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
        """logits: [B, V]; row i belongs to requests[i]. Masks constrained rows in place; returns logits."""
        rows = [i for i, r in enumerate(requests) if r.grammar is not None]
        if not rows:
            return logits
        if self._bitmask.shape[0] < len(requests):
            self._bitmask = xgr.allocate_token_bitmask(max(len(requests), 2 * self._bitmask.shape[0]), self.vocab_size)
        masked = []
        for i in rows:
            state = requests[i].grammar
            assert state is not None
            state.sync(requests[i].output_token_ids)
            if state.fill(self._bitmask, i):
                masked.append(i)
        if masked:
            apply_bitmask(logits, self._bitmask, masked, self.vocab_size)
        return logits


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int], vocab_size: int) -> None:
    """Set logits[r, t] = -inf where bit t of bitmask[r] is 0, for r in rows; on the logits' device."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float16, torch.bfloat16):
        xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab_size, indices=rows)
        return
    index = torch.tensor(rows, device=logits.device)
    allowed = unpack_bitmask(bitmask[rows].to(logits.device, non_blocking=True), vocab_size)
    logits[index, :vocab_size] = logits[index, :vocab_size].masked_fill(~allowed, float("-inf"))
