"""Incremental detokenization with stop strings matched across token boundaries.

Text is emitted only when complete: the tokenizer's decode stream never yields
half a UTF-8 character, and the last ``len(longest stop string) - 1`` characters
are held back until they can no longer start a stop string.
"""

from __future__ import annotations

from typing import Protocol

from servewise.types import SamplingParams


class DecodeStream(Protocol):
    def step(self, token_id: int) -> str | None: ...

    def flush(self) -> str: ...


class TokenizerLike(Protocol):
    def new_decode_stream(self, skip_special_tokens: bool = True) -> DecodeStream: ...


class StopAwareDetokenizer:
    def __init__(self, tokenizer: TokenizerLike, params: SamplingParams) -> None:
        self._stream = tokenizer.new_decode_stream(skip_special_tokens=params.skip_special_tokens)
        self._stop = params.stop
        self._include_stop = params.include_stop_str_in_output
        self._holdback = max(0, params.max_stop_chars - 1)
        self.text = ""  # everything decoded so far (cut at the stop string once one matched)
        self._num_emitted_chars = 0

    def add_token(self, token_id: int) -> str | None:
        """Decode one more token; returns the stop string it completed, if any."""
        piece = self._stream.step(token_id)
        if not piece:
            return None
        search_from = max(0, len(self.text) - self._holdback)
        self.text += piece
        if not self._stop:
            return None
        best: tuple[int, str] | None = None
        for stop in self._stop:
            at = self.text.find(stop, search_from)
            if at != -1 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return None
        at, stop = best
        self.text = self.text[: at + len(stop)] if self._include_stop else self.text[:at]
        return stop

    def flush(self) -> None:
        """The sequence ended without a stop string: keep bytes still held back (e.g. half a character)."""
        self.text += self._stream.flush()

    def take_delta(self, finished: bool) -> str:
        """New text safe to send: all of it once finished, else minus the stop-string holdback."""
        end = len(self.text) if finished else max(self._num_emitted_chars, len(self.text) - self._holdback)
        delta = self.text[self._num_emitted_chars:end]
        self._num_emitted_chars = end
        return delta
