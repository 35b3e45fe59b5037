"""Passages of real text with an exact token count.

Only a token *count* is needed (the server's /tokenize gives no offsets), so a
passage is grown or shrunk word by word from a seeded start in the corpus:
estimate the word count from the corpus's tokens per word, bracket the target,
bisect. When the target falls inside a multi-token word, the largest passage
below it is topped up with a one-token filler word.
"""

from __future__ import annotations

import logging
import re

from servewise.bench.tokenizer import TokenCounter

log = logging.getLogger("servewise.bench")

# Topped onto a passage whose next word would overshoot; tried in turn until one adds
# exactly one token each (" the" does in common BPE vocabularies).
FILLER_WORDS = (" the", " a", " I", ".")
CALIBRATION_WORDS = 2000  # words of the corpus counted once to learn tokens per word
ESTIMATE_STEPS = 3  # steps guided by tokens per word before plain bisection
MAX_STEPS = 64


class TextCutter:
    """Cuts passages of an exact token count from a corpus, wrapping around its end."""

    def __init__(self, corpus: str, counter: TokenCounter) -> None:
        self._words = re.findall(r"\S+\s*", corpus)  # each word with its trailing whitespace
        if len(self._words) < 2:
            raise ValueError("the corpus needs at least two words of text")
        # A passage that wraps past the end starts a new paragraph rather than gluing two words.
        self._words[-1] = self._words[-1].rstrip() + "\n\n"
        self._counter = counter
        self._tokens_per_word: float | None = None

    @property
    def num_words(self) -> int:
        return len(self._words)

    async def calibrate(self) -> float:
        """Tokens per word of the corpus; counted once, before any concurrent cut."""
        if self._tokens_per_word is None:
            sample = self._words[:CALIBRATION_WORDS]
            num_tokens = await self._counter.count("".join(sample))
            self._tokens_per_word = max(num_tokens / len(sample), 0.1)
        return self._tokens_per_word

    def passage(self, start_word: int, num_words: int) -> str:
        n = len(self._words)
        return "".join(self._words[(start_word + i) % n] for i in range(num_words)).rstrip()

    async def cut(self, num_tokens: int, start_word: int) -> tuple[str, int]:
        """(text, its token count) for a passage starting at word ``start_word``.

        The count equals ``num_tokens`` except for tokenizers where no passage plus
        fillers hits it; then the closest found is returned with its real count.
        """
        if num_tokens < 1:
            raise ValueError("num_tokens must be ≥ 1")
        tokens_per_word = await self.calibrate()
        lo_words, lo_tokens = 0, 0  # largest passage known to be under the target
        hi_words: int | None = None  # smallest passage known to be over the target
        num_words = max(1, round(num_tokens / tokens_per_word))
        for step in range(MAX_STEPS):
            count = await self._counter.count(self.passage(start_word, num_words))
            if count == num_tokens:
                return self.passage(start_word, num_words), count
            if count < num_tokens:
                lo_words, lo_tokens = num_words, count
            else:
                hi_words = num_words
            if hi_words is not None and hi_words - lo_words <= 1:
                break
            num_words = _next_guess(num_words, count, num_tokens, tokens_per_word, lo_words, hi_words,
                                    bisect=step >= ESTIMATE_STEPS)
        return await self._top_up(self.passage(start_word, lo_words), lo_tokens, num_tokens)

    async def _top_up(self, base: str, base_tokens: int, num_tokens: int) -> tuple[str, int]:
        best: tuple[str, int] = (base, base_tokens)
        for filler in FILLER_WORDS:
            num_fillers = num_tokens - base_tokens
            for _ in range(3):
                text = (base + filler * num_fillers).lstrip()
                count = await self._counter.count(text)
                if abs(count - num_tokens) < abs(best[1] - num_tokens):
                    best = (text, count)
                if count == num_tokens:
                    return best
                num_fillers = max(0, num_fillers + num_tokens - count)
        log.debug("no passage of exactly %d tokens; using %d", num_tokens, best[1])
        return best


def _next_guess(num_words: int, count: int, target: int, tokens_per_word: float,
                lo_words: int, hi_words: int | None, *, bisect: bool) -> int:
    if bisect and hi_words is not None:
        return (lo_words + hi_words) // 2
    step = round((target - count) / tokens_per_word)
    guess = num_words + (step if step != 0 else (1 if count < target else -1))
    if hi_words is None:
        return max(guess, lo_words + 1)
    return min(max(guess, lo_words + 1), hi_words - 1)

