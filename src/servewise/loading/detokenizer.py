"""Incremental detokenization: token ids in, text deltas out, never half a character.

The prefix/read-offset scheme of TGI and vLLM (and of ``tokenizers.decoders.DecodeStream``,
which does the same in Rust but cannot hand back what is pending when a stream ends):

    ids:  ... [prefix_offset ......... read_offset) [new tokens ...]
                 last emitted chunk                  not yet emitted

Each step decodes the window from `prefix_offset` twice, with and without the new tokens, and
emits the difference once it grows and does not end in U+FFFD (an incomplete UTF-8 sequence, as a
multi-byte character split over byte-level or byte-fallback tokens). Decoding a window that starts
one chunk back keeps decoders that look at their neighbours right: SentencePiece's
"strip the leading space" applies to the window's first token in both decodes alike.

Limit (shared with DecodeStream): SentencePiece's ByteFallback decoder turns every byte of an
invalid byte-token run into U+FFFD, so a valid byte already emitted can decode differently once
an invalid continuation follows; pieces then differ from decode(ids) for such garbage output.
"""

from __future__ import annotations

import tokenizers

from servewise.errors import InvalidRequestError

_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Feed ids with `step`; the pieces it returns, plus `flush()`, concatenate to `decode(ids)`."""

    def __init__(self, backend: tokenizers.Tokenizer, skip_special_tokens: bool = True,
                 vocab_size: int | None = None) -> None:
        self._backend = backend
        self._vocab_size = backend.get_vocab_size(with_added_tokens=True) if vocab_size is None else vocab_size
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the last emitted chunk
        self._read_offset = 0  # end of what has been emitted

    @property
    def token_ids(self) -> list[int]:
        return self._ids

    def _decode(self, start: int, stop: int | None = None) -> str:
        return self._backend.decode(self._ids[start:stop], skip_special_tokens=self._skip_special_tokens)

    def step(self, token_id: int) -> str | None:
        """Add one token; return the new text, or None while a character is incomplete."""
        if not 0 <= token_id < self._vocab_size:
            raise InvalidRequestError(f"token id {token_id} is out of range [0, {self._vocab_size})")
        self._ids.append(token_id)
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        new_text = self._decode(self._prefix_offset)
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT_CHAR):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return new_text[len(prefix_text):]
        return None

    def flush(self) -> str:
        """The text still held back at the end of a stream (with U+FFFD for incomplete bytes)."""
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        new_text = self._decode(self._prefix_offset)
        if len(new_text) <= len(prefix_text):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return new_text[len(prefix_text):]
