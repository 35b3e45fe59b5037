"""Incremental detokenization: pieces join to decode(ids) and never split a character."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers.decoders import DecodeStream

from servewise.loading import Tokenizer, load_checkpoint
from servewise.loading.tokenizer import TokenSpelling
from tests.factories import SAMPLE_TEXTS, embedded_gguf_path, write_tiny_gguf, write_tiny_hf_checkpoint

UNICODE_TEXTS = [t for t in SAMPLE_TEXTS if not t.isascii()] + [
    "🧑‍🚀 astronaut, 🏳️‍🌈 flag, 🫠 melting", "漢字とかなが混ざった文章です。", "Ελληνικά και 中文 and English",
    "math: ∑ x² ≤ ∞, arrows → ⇒, box ┌─┐", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 outside the BMP 𐍈",
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tokenizer]:
    root = tmp_path_factory.mktemp("detok")
    found = {
        "byte-level": load_checkpoint(str(write_tiny_hf_checkpoint(root / "hf"))).tokenizer,
        "sentencepiece": load_checkpoint(str(write_tiny_gguf(root / "spm.gguf", tokenizer_model="llama"))).tokenizer,
    }
    return found


def _embedded_tokenizer() -> Tokenizer:
    from servewise.loading.gguf_file import read_gguf
    from servewise.loading.gguf_tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(read_gguf(embedded_gguf_path()))


def _stream(tokenizer: Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> tuple[list[str], str]:
    stream = tokenizer.new_decode_stream(skip_special_tokens=skip_special_tokens)
    pieces = [piece for piece in (stream.step(i) for i in ids) if piece is not None]
    return pieces, stream.flush()


def _check_texts(tokenizer: Tokenizer) -> None:
    for text in UNICODE_TEXTS + SAMPLE_TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        pieces, rest = _stream(tokenizer, ids)
        assert "".join(pieces) + rest == tokenizer.decode(ids), text
        assert rest == "" and not any("\ufffd" in p for p in pieces), (text, pieces)


def _random_ids(tokenizer: Tokenizer, rng: np.random.Generator) -> list[int]:
    """Random token ids. SentencePiece byte tokens come only as whole UTF-8 characters: the
    ByteFallback decoder turns every byte of an invalid run into U+FFFD, valid ones included,
    so text already shown could change afterwards (as with tokenizers' own DecodeStream)."""
    if tokenizer.spelling is not TokenSpelling.SENTENCEPIECE:
        return rng.integers(0, tokenizer.vocab_size, size=int(rng.integers(1, 40))).tolist()
    byte_ids = {tokenizer.token_to_id(f"<0x{b:02X}>") for b in range(256)}
    others = [i for i in range(tokenizer.vocab_size) if i not in byte_ids]
    ids: list[int] = []
    for _ in range(int(rng.integers(1, 30))):
        if rng.random() < 0.7:
            ids.append(int(rng.choice(others)))
        else:
            char = chr(int(rng.choice([rng.integers(0x80, 0x800), rng.integers(0x4E00, 0x9FFF),
                                       rng.integers(0x1F300, 0x1FAFF)])))
            ids += [tokenizer.token_to_id(f"<0x{b:02X}>") for b in char.encode()]
    return ids


def _check_random_ids(tokenizer: Tokenizer, seed: int, num_sequences: int = 150) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(num_sequences):
        ids = _random_ids(tokenizer, rng)
        for skip in (True, False):
            pieces, rest = _stream(tokenizer, ids, skip)
            assert "".join(pieces) + rest == tokenizer.decode(ids, skip_special_tokens=skip), ids


@pytest.mark.parametrize("kind", ["byte-level", "sentencepiece"])
def test_valid_text_streams_whole_characters(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    _check_texts(tokenizers[kind])


@pytest.mark.parametrize("kind", ["byte-level", "sentencepiece"])
def test_random_ids_join_to_decode(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    _check_random_ids(tokenizers[kind], seed=0)


def test_embedded_tokenizer_streams() -> None:
    tokenizer = _embedded_tokenizer()
    _check_texts(tokenizer)
    _check_random_ids(tokenizer, seed=1, num_sequences=100)


def test_pieces_match_tokenizers_decode_stream(tokenizers: dict[str, Tokenizer]) -> None:
    """Same chunks as tokenizers' own DecodeStream; ours can also flush what is pending."""
    for tokenizer in tokenizers.values():
        for text in UNICODE_TEXTS:
            ids = tokenizer.encode(text, add_special_tokens=False)
            reference = DecodeStream(skip_special_tokens=True)
            expected = [p for p in (reference.step(tokenizer.backend, i) for i in ids) if p is not None]
            assert _stream(tokenizer, ids)[0] == expected, text


def test_flush_returns_an_incomplete_character(tokenizers: dict[str, Tokenizer]) -> None:
    tokenizer = tokenizers["byte-level"]
    ids = tokenizer.encode("ok 😀", add_special_tokens=False)[:-1]  # the emoji's last byte never arrives
    stream = tokenizer.new_decode_stream()
    shown = "".join(p for p in (stream.step(i) for i in ids) if p)
    rest = stream.flush()
    assert shown + rest == tokenizer.decode(ids) and rest.endswith("\ufffd") and "\ufffd" not in shown
    assert stream.token_ids == ids
