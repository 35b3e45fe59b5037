"""A `Tokenizer` from a GGUF's ``tokenizer.ggml.*`` metadata (a GGUF has no tokenizer.json).

Two vocabulary kinds, as llama.cpp names them in ``tokenizer.ggml.model``:

- ``gpt2``: byte-level BPE (SmolLM, Llama 3, Qwen2, ...). Tokens are spelled in GPT-2's byte
  alphabet; ``tokenizer.ggml.pre`` names the pre-tokenizer split, rebuilt here as the model's own
  tokenizer.json has it (e.g. SmolLM splits digits one by one, Qwen2 normalises to NFC, Llama 3
  skips merges for whole-vocabulary words).
- ``llama``: SentencePiece BPE with "▁" for spaces and <0xNN> byte fallback (Llama 2, Mistral).
  Merges are rebuilt from the token scores, best first, as transformers does.

Token types mark control tokens (special: matched whole, skipped by decode(skip_special_tokens))
and user-defined ones (matched whole, kept in text).
"""

from __future__ import annotations

import logging

import tokenizers
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from servewise.loading.gguf_file import GGUFFile
from servewise.loading.tokenizer import Tokenizer, bytes_to_unicode

logger = logging.getLogger(__name__)

# llama.cpp token types (tokenizer.ggml.token_type)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> (split regex or None for GPT-2's built-in one, ignore_merges, NFC normaliser)
_PRE_TOKENIZERS: dict[str, tuple[str | None, bool, bool]] = {
    "default": (None, False, False), "gpt-2": (None, False, False),
    **{name: (_LLAMA3_SPLIT, True, False) for name in ("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3")},
    **{name: (_QWEN2_SPLIT, False, True) for name in ("qwen2", "deepseek-r1-qwen")},
    "tekken": (_TEKKEN_SPLIT, False, False),
    "gpt-4o": (_GPT4O_SPLIT, False, False),
}
# llama.cpp also ends generation on these control tokens when the file's eos is another one
# (e.g. Llama 3 files whose eos is <|end_of_text|> while chat turns end with <|eot_id|>).
_END_OF_TURN_TOKENS = frozenset({"<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                 "<|endoftext|>", "<|end_of_text|>", "<EOT>"})


def _byte_level_pre_tokenizer(pre: str) -> tuple[pre_tokenizers.PreTokenizer, bool, normalizers.Normalizer | None]:
    byte_level_with_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # SmolLM's tokenizer.json: digits one by one, then GPT-2's split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level_with_regex]), \
            False, None
    split, ignore_merges, nfc = _PRE_TOKENIZERS[pre]
    if split is None:
        return byte_level_with_regex, ignore_merges, None
    sequence = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return sequence, ignore_merges, normalizers.NFC() if nfc else None


def _parse_merges(gguf: GGUFFile, merges: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for index, merge in enumerate(merges):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise gguf.error(f"tokenizer.ggml.merges[{index}] is not two tokens separated by a space: {merge[:50]!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def _first_ids(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    return vocab


def _byte_level_bpe(gguf: GGUFFile, tokens: list[str], types: list[int]) -> tokenizers.Tokenizer:
    pre = gguf.get_str("tokenizer.ggml.pre", "default")
    if pre != "smollm" and pre not in _PRE_TOKENIZERS:
        supported = ", ".join(["smollm", *_PRE_TOKENIZERS])
        raise gguf.error(f"unsupported pre-tokenizer {pre!r} (tokenizer.ggml.pre); supported: {supported}")
    alphabet = set(bytes_to_unicode().values())
    spelling = bytes_to_unicode()
    # Normal tokens outside the byte alphabet are respelled (as transformers does); control and
    # user-defined ones keep their text so that they can be matched whole in the input.
    spelled = [t if types[i] in (_CONTROL, _USER_DEFINED) or set(t) <= alphabet
               else "".join(spelling[b] for b in t.encode("utf-8")) for i, t in enumerate(tokens)]
    merges = gguf.get_str_list("tokenizer.ggml.merges")
    if merges is None:
        raise gguf.error("tokenizer.ggml.merges is missing (needed by a gpt2 tokenizer)")
    pre_tokenizer, ignore_merges, normalizer = _byte_level_pre_tokenizer(pre)
    try:
        model = BPE(vocab=_first_ids(spelled), merges=_parse_merges(gguf, merges), dropout=None,
                    continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, ignore_merges=ignore_merges)
    except Exception as exc:  # tokenizers raises plain Exception for merges naming unknown tokens
        raise gguf.error(f"invalid BPE vocabulary: {exc}") from exc
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizer
    backend.normalizer = normalizer
    backend.decoder = decoders.ByteLevel()
    return backend


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges: every split of a token into two tokens, best-scored token first."""
    vocab = _first_ids(tokens)
    ranked: list[tuple[float, str, str]] = []
    for token, score in zip(tokens, scores, strict=True):
        local = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab]
        local.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        ranked.extend((score, left, right) for left, right in local)
    ranked.sort(key=lambda m: (m[0], len(m[1]), len(m[2])), reverse=True)
    return [(left, right) for _, left, right in ranked]


def _sentencepiece_bpe(gguf: GGUFFile, tokens: list[str]) -> tokenizers.Tokenizer:
    scores = gguf.get_array("tokenizer.ggml.scores")
    merges = gguf.get_str_list("tokenizer.ggml.merges")
    if merges is not None:
        merge_pairs = _parse_merges(gguf, merges)
    elif scores is not None and len(scores) == len(tokens):
        merge_pairs = _merges_from_scores(tokens, scores.tolist())
    else:
        raise gguf.error("a llama tokenizer needs tokenizer.ggml.scores (one per token) or tokenizer.ggml.merges")
    add_space_prefix = gguf.get_bool("tokenizer.ggml.add_space_prefix", True)
    backend = tokenizers.Tokenizer(BPE(vocab=_first_ids(tokens), merges=merge_pairs, dropout=None,
                                       fuse_unk=True, byte_fallback=True))
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if add_space_prefix else "never", split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _token_at(gguf: GGUFFile, tokens: list[str], key: str) -> str | None:
    token_id = gguf.get_int(f"tokenizer.ggml.{key}")
    if token_id is None:
        return None
    if not 0 <= token_id < len(tokens):
        raise gguf.error(f"tokenizer.ggml.{key} = {token_id} is not a token id (vocabulary of {len(tokens)})")
    return tokens[token_id]


def _eos_ids(gguf: GGUFFile, tokens: list[str], types: list[int]) -> list[int]:
    ids = [gguf.get_int(f"tokenizer.ggml.{key}") for key in ("eos_token_id", "eot_token_id", "eom_token_id")]
    ids += [i for i, t in enumerate(tokens) if types[i] == _CONTROL and t in _END_OF_TURN_TOKENS]
    return [i for i in dict.fromkeys(ids) if i is not None and 0 <= i < len(tokens)]


def _add_special_tokens(backend: tokenizers.Tokenizer, tokens: list[str], types: list[int],
                        named: list[str | None]) -> None:
    special = {t for t, kind in zip(tokens, types, strict=True) if kind in (_CONTROL, _UNKNOWN)} | {t for t in named if t}
    user_defined = [t for t, kind in zip(tokens, types, strict=True) if kind == _USER_DEFINED and t not in special]
    # Sorted by id, as transformers adds them; matching whole tokens in text does not depend on order.
    vocab = backend.get_vocab()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in sorted(special, key=lambda t: vocab.get(t, -1))])
    if user_defined:
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])


def _set_post_processor(gguf: GGUFFile, backend: tokenizers.Tokenizer, model: str,
                        bos: str | None, eos: str | None) -> None:
    add_bos = bool(gguf.get_bool("tokenizer.ggml.add_bos_token", model == "llama")) and bos is not None
    add_eos = bool(gguf.get_bool("tokenizer.ggml.add_eos_token", False)) and eos is not None
    single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
    pair = " ".join([single] + [f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos)
    special = [(t, backend.token_to_id(t)) for t, on in ((bos, add_bos), (eos, add_eos)) if on and t is not None]
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def tokenizer_from_gguf(gguf: GGUFFile) -> Tokenizer:
    """Build the tokenizer the file describes; ModelLoadError if it is missing or unsupported."""
    model = gguf.get_str("tokenizer.ggml.model")
    tokens = gguf.get_str_list("tokenizer.ggml.tokens")
    if model is None or tokens is None:
        raise gguf.error("no tokenizer in the file (tokenizer.ggml.model / tokenizer.ggml.tokens missing)")
    token_types = gguf.get_array("tokenizer.ggml.token_type")
    if token_types is not None and len(token_types) != len(tokens):
        raise gguf.error(f"tokenizer.ggml.token_type has {len(token_types)} entries for {len(tokens)} tokens")
    types = token_types.tolist() if token_types is not None else [_NORMAL] * len(tokens)
    if model == "gpt2":
        backend = _byte_level_bpe(gguf, tokens, types)
    elif model == "llama":
        backend = _sentencepiece_bpe(gguf, tokens)
    else:
        raise gguf.error(f"unsupported tokenizer model {model!r} (tokenizer.ggml.model); supported: gpt2, llama")
    bos, eos = _token_at(gguf, tokens, "bos_token_id"), _token_at(gguf, tokens, "eos_token_id")
    pad, unk = _token_at(gguf, tokens, "padding_token_id"), _token_at(gguf, tokens, "unknown_token_id")
    _add_special_tokens(backend, tokens, types, [bos, eos, pad, unk])
    _set_post_processor(gguf, backend, model, bos, eos)
    return Tokenizer(backend, bos_token=bos, eos_token=eos, eos_token_ids=_eos_ids(gguf, tokens, types),
                     pad_token=pad, unk_token=unk, chat_template=gguf.get_str("tokenizer.chat_template"))
