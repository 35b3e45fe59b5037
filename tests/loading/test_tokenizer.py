"""Tokenizers built from HF directories and from GGUF metadata encode like transformers."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import pytest

from servewise.errors import InvalidRequestError
from servewise.loading import Tokenizer, load_checkpoint
from servewise.loading.tokenizer import TokenSpelling
from tests.factories import SAMPLE_TEXTS, SPECIAL_TOKENS, write_tiny_gguf, write_tiny_hf_checkpoint


def _auto_tokenizer(directory: Path, gguf_file: str | None = None) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)


def assert_same_encodings(ours: Tokenizer, reference: Any, texts: list[str]) -> None:
    for text in texts:
        for add_special in (True, False):
            expected = reference.encode(text, add_special_tokens=add_special)
            assert ours.encode(text, add_special_tokens=add_special) == expected, (text, add_special)
        ids = reference.encode(text, add_special_tokens=True)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip), text


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    dirs = {arch: write_tiny_hf_checkpoint(root / arch, architecture=arch) for arch in ("llama", "qwen2")}
    (root / "spm").mkdir()
    write_tiny_gguf(root / "spm" / "spm.gguf", tokenizer_model="llama")
    (root / "bpe").mkdir()
    write_tiny_gguf(root / "bpe" / "bpe.gguf")
    (root / "qwen2-gguf").mkdir()
    write_tiny_gguf(root / "qwen2-gguf" / "qwen2.gguf", architecture="qwen2")
    return {**dirs, "spm": root / "spm", "bpe": root / "bpe", "qwen2-gguf": root / "qwen2-gguf"}


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_hf_directory_matches_transformers(tiny_dirs: dict[str, Path], architecture: str) -> None:
    ours = load_checkpoint(str(tiny_dirs[architecture])).tokenizer
    reference = _auto_tokenizer(tiny_dirs[architecture])
    assert_same_encodings(ours, reference, SAMPLE_TEXTS)
    assert ours.vocab_size == len(reference)
    assert ours.bos_token == reference.bos_token == "<s>" and ours.eos_token == reference.eos_token == "<|im_end|>"
    assert ours.add_bos_token == (architecture == "llama")
    assert ours.pad_token_id == reference.pad_token_id
    assert ours.special_token_ids == frozenset(range(len(SPECIAL_TOKENS)))


@pytest.mark.parametrize("name, file", [("spm", "spm.gguf"), ("bpe", "bpe.gguf"), ("qwen2-gguf", "qwen2.gguf")])
def test_gguf_tokenizers_match_transformers(tiny_dirs: dict[str, Path], name: str, file: str) -> None:
    ours = load_checkpoint(str(tiny_dirs[name] / file)).tokenizer
    reference = _auto_tokenizer(tiny_dirs[name], gguf_file=file)
    texts = [t for t in SAMPLE_TEXTS if name != "spm" or "<|" not in t]  # no ChatML tokens in the SPM vocab
    if name == "qwen2-gguf":
        # We normalise to NFC as Qwen2's own tokenizer.json does; transformers' GGUF conversion
        # does not, so compare on NFC-invariant text only.
        texts = [t for t in texts if unicodedata.normalize("NFC", t) == t]
    assert_same_encodings(ours, reference, texts)
    assert ours.add_bos_token == (name == "spm")


@pytest.mark.parametrize("hf_name, gguf_path", [("llama", "bpe/bpe.gguf"), ("qwen2", "qwen2-gguf/qwen2.gguf")])
def test_gguf_and_hf_forms_of_one_tokenizer_agree(tiny_dirs: dict[str, Path], hf_name: str, gguf_path: str) -> None:
    """The same vocabulary as tokenizer.json and as GGUF metadata (with its `pre` type) encodes alike."""
    from_dir = load_checkpoint(str(tiny_dirs[hf_name])).tokenizer
    from_gguf = load_checkpoint(str(tiny_dirs["bpe"].parent / gguf_path)).tokenizer
    for text in SAMPLE_TEXTS:
        assert from_gguf.encode(text, add_special_tokens=False) == from_dir.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("name", ["llama", "bpe", "spm"])
def test_token_bytes_spell_the_text(tiny_dirs: dict[str, Path], name: str) -> None:
    path = tiny_dirs[name] if name == "llama" else next(tiny_dirs[name].glob("*.gguf"))
    tokenizer = load_checkpoint(str(path)).tokenizer
    expected_spelling = TokenSpelling.SENTENCEPIECE if name == "spm" else TokenSpelling.BYTE_LEVEL
    assert tokenizer.spelling is expected_spelling
    for text in SAMPLE_TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        spelled = b"".join(tokenizer.token_bytes(i) for i in ids)
        if name == "spm":  # SentencePiece writes the text with a leading "▁"
            assert spelled.replace(b" ", b"") == text.replace(" ", "").encode(), text
        else:
            assert spelled == text.encode(), text
    with pytest.raises(InvalidRequestError):
        tokenizer.token_bytes(tokenizer.vocab_size)


def test_token_lookup(tiny_dirs: dict[str, Path]) -> None:
    tokenizer = load_checkpoint(str(tiny_dirs["llama"])).tokenizer
    assert tokenizer.token_to_id("<|im_end|>") == 3 and tokenizer.id_to_token(3) == "<|im_end|>"
    assert tokenizer.token_to_id("no such token") is None and tokenizer.id_to_token(10**6) is None
    assert tokenizer.token_bytes(3) == b"<|im_end|>"
    for bad in (-1, tokenizer.vocab_size, 2**40):
        with pytest.raises(InvalidRequestError, match="out of range"):
            tokenizer.decode([5, bad])
        with pytest.raises(InvalidRequestError, match="out of range"):
            tokenizer.new_decode_stream().step(bad)
