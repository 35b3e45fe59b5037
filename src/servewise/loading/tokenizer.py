"""`Tokenizer`: a Hugging Face `tokenizers.Tokenizer` plus what serving needs around it.

Special token ids, the chat template, incremental detokenization and each token's raw bytes
(OpenAI logprobs report them), whatever file the tokenizer came from.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import tokenizers

from servewise.errors import InvalidRequestError
from servewise.loading.chat_template import ChatTemplate
from servewise.loading.detokenizer import IncrementalDetokenizer

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPACE_MARK = "\u2581"  # SentencePiece's "▁"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in bytes_to_unicode().items()}


class TokenSpelling(enum.Enum):
    """How a vocabulary entry spells the bytes it stands for."""

    BYTE_LEVEL = "byte_level"  # GPT-2 alphabet: each char is one byte ("Ġ" = space)
    SENTENCEPIECE = "sentencepiece"  # "▁" = space, "<0xNN>" = one raw byte
    PLAIN = "plain"  # the token string is the text


def detect_spelling(backend: tokenizers.Tokenizer) -> TokenSpelling:
    """From the decoder: ByteLevel -> byte-level; ByteFallback/Metaspace/"▁" -> SentencePiece."""
    decoder = backend.decoder
    if decoder is None:
        return TokenSpelling.PLAIN
    # A decoder pickles to its JSON description, nested Sequence members included.
    text = json.dumps(json.loads(decoder.__getstate__()), ensure_ascii=False)
    if '"ByteLevel"' in text:
        return TokenSpelling.BYTE_LEVEL
    if '"ByteFallback"' in text or '"Metaspace"' in text or _SPACE_MARK in text:
        return TokenSpelling.SENTENCEPIECE
    return TokenSpelling.PLAIN


class Tokenizer:
    """Encode/decode text for one model.

    Attributes: vocab_size (incl. added tokens), bos_token_id, eos_token_ids (every id that ends
    generation), pad_token_id, add_bos_token (encode(..., add_special_tokens=True) prepends BOS),
    chat_template (Jinja source or None), special_token_ids, backend, bos_token, eos_token.
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, bos_token: str | None, eos_token: str | None,
                 eos_token_ids: Sequence[int], pad_token: str | None = None, unk_token: str | None = None,
                 chat_template: str | None = None) -> None:
        self.backend = backend
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.bos_token_id = backend.token_to_id(bos_token) if bos_token is not None else None
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos_token_ids))
        self.pad_token_id = backend.token_to_id(pad_token) if pad_token is not None else None
        self.chat_template = chat_template
        self.special_token_ids = frozenset(
            i for i, tok in backend.get_added_tokens_decoder().items() if tok.special)
        self.add_bos_token = self._prepends_bos()
        self.spelling = detect_spelling(backend)
        template_vars = {"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token, "unk_token": unk_token}
        self._template_vars = {k: v for k, v in template_vars.items() if v is not None}
        self._chat_template: ChatTemplate | None = None
        self._token_bytes: list[bytes] | None = None

    def _prepends_bos(self) -> bool:
        if self.bos_token_id is None:
            return False
        with_special = self.backend.encode("a", add_special_tokens=True).ids
        return with_special[:1] == [self.bos_token_id] and self.backend.encode("a", add_special_tokens=False).ids[:1] \
            != [self.bos_token_id]

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos_token_id={self.bos_token_id}, "
                f"eos_token_ids={self.eos_token_ids}, add_bos_token={self.add_bos_token})")

    # -- text <-> ids ---------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special tokens written in the text are recognised as such."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; InvalidRequestError for an id outside the vocabulary (tokenizers would
        skip it silently, or raise OverflowError for a negative one)."""
        id_list = list(ids)
        if id_list and (min(id_list) < 0 or max(id_list) >= self.vocab_size):
            bad = next(i for i in id_list if not 0 <= i < self.vocab_size)
            raise InvalidRequestError(f"token id {bad} is out of range [0, {self.vocab_size})")
        return self.backend.decode(id_list, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def new_decode_stream(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        """An incremental detokenizer: `.step(id) -> str | None`, and `.flush()` at the end."""
        return IncrementalDetokenizer(self.backend, skip_special_tokens, vocab_size=self.vocab_size)

    # -- token bytes ----------------------------------------------------------------------

    def _spell(self, token_id: int, added: dict[int, Any]) -> bytes:
        token = self.backend.id_to_token(token_id)
        if token is None:
            return b""
        if token_id in added:
            return token.encode("utf-8")
        if self.spelling is TokenSpelling.BYTE_LEVEL:
            return b"".join(bytes([_UNICODE_TO_BYTE[c]]) if c in _UNICODE_TO_BYTE else c.encode("utf-8")
                            for c in token)
        if self.spelling is TokenSpelling.SENTENCEPIECE:
            match = _BYTE_TOKEN.fullmatch(token)
            if match:
                return bytes([int(match.group(1), 16)])
            return token.replace(_SPACE_MARK, " ").encode("utf-8")
        return token.encode("utf-8")

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (a byte-level token may be part of a UTF-8 character)."""
        if not 0 <= token_id < self.vocab_size:
            raise InvalidRequestError(f"token id {token_id} is out of range [0, {self.vocab_size})")
        if self._token_bytes is None:
            added = self.backend.get_added_tokens_decoder()
            self._token_bytes = [self._spell(i, added) for i in range(self.vocab_size)]
        return self._token_bytes[token_id]

    # -- chat -----------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            **extra: Any) -> str:
        """Render `messages` (OpenAI-style dicts) with the model's template, as transformers does."""
        if self.chat_template is None:
            raise InvalidRequestError("this model has no chat template; use the completions API with a raw prompt")
        if self._chat_template is None:
            self._chat_template = ChatTemplate(self.chat_template, self._template_vars)
        return self._chat_template.render(messages, add_generation_prompt=add_generation_prompt, **extra)
