"""llguidance as the fallback backend for JSON schemas xgrammar would not enforce (engine/schema_support.py).

Its token bitmask has xgrammar's layout (bit j of int32 word w = token 32w + j), so the batched
masking in engine/structured.py is shared; only compiling and matching differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import llguidance as llg
import llguidance.torch as llg_torch
import torch

from servewise.errors import InvalidRequestError


class _Vocabulary:
    """What llguidance's TokenizerWrapper reads: token bytes, special ids, and a way to tokenize."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        special = tokenizer.special_token_ids
        num_tokens = min(tokenizer.vocab_size, vocab_size)
        self.tokens = [b"" if i in special else tokenizer.token_bytes(i) for i in range(num_tokens)]
        self.tokens += [b""] * (vocab_size - num_tokens)
        self.special_token_ids = sorted(special)
        self.eos_token_id = stop_token_ids[0]
        self.bos_token_id = tokenizer.bos_token_id
        self._tokenizer = tokenizer

    def __call__(self, text: bytes | str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return list(self._tokenizer.encode(text, add_special_tokens=False))


def ll_tokenizer(tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int]) -> llg.LLTokenizer:
    stops = sorted(set(stop_token_ids))
    return llg.LLTokenizer(llg.TokenizerWrapper(_Vocabulary(tokenizer, vocab_size, stops)), n_vocab=vocab_size,
                           eos_token=stops)


def compile_json_schema(ll_tok: llg.LLTokenizer, schema_json: str) -> str:
    """The llguidance grammar of a schema (compact JSON), or InvalidRequestError naming the problem."""
    grammar = llg.LLMatcher.grammar_from_json_schema(schema_json, defaults={"whitespace_flexible": False})
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, ll_tok)
    if is_error:
        raise InvalidRequestError(f"invalid json schema: {messages[0][:500]}", param="response_format")
    return grammar


class LLGuidanceMatcher:
    """xgrammar's GrammarMatcher interface, over an llguidance matcher (what GrammarState uses)."""

    def __init__(self, ll_tok: llg.LLTokenizer, grammar: str) -> None:
        self._matcher = llg.LLMatcher(ll_tok, grammar, log_level=0)
        if self._matcher.is_error():
            raise RuntimeError(self._matcher.get_error())

    def accept_token(self, token_id: int) -> bool:
        return bool(self._matcher.consume_token(token_id)) and not self._matcher.is_error()

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, index: int = 0) -> bool:
        llg_torch.fill_next_token_bitmask(self._matcher, bitmask, index)
        return True

    def is_terminated(self) -> bool:
        return bool(self._matcher.is_stopped())

    def is_completed(self) -> bool:
        return bool(self._matcher.is_accepting())

    def reset(self) -> None:
        self._matcher.reset()
