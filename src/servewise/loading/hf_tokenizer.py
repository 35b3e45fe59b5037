"""A `Tokenizer` from a Hugging Face directory: tokenizer.json + tokenizer_config.json.

Follows transformers (v5) where the files leave room: tokens named in tokenizer_config.json but
missing from tokenizer.json are added; an explicit ``add_bos_token``/``add_eos_token`` (or a
tokenizer.json without post-processor) rebuilds the post-processor from those flags; the chat
template comes from ``chat_template.jinja``, else ``chat_template.json``, else the config.
"""

from __future__ import annotations

import os
from typing import Any

import tokenizers
from tokenizers import AddedToken, processors

from servewise.errors import ModelLoadError
from servewise.loading.hf_config import read_optional_json
from servewise.loading.tokenizer import Tokenizer

_MAX_TEMPLATE_BYTES = 1024 * 1024
_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_text(value: Any) -> str | None:
    """A special token in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _added_token(value: Any, special: bool) -> AddedToken | None:
    content = _token_text(value)
    if content is None:
        return None
    spec = value if isinstance(value, dict) else {}
    return AddedToken(content, single_word=bool(spec.get("single_word", False)), lstrip=bool(spec.get("lstrip", False)),
                      rstrip=bool(spec.get("rstrip", False)), normalized=bool(spec.get("normalized", not special)),
                      special=bool(spec.get("special", special)))


def _add_missing_tokens(backend: tokenizers.Tokenizer, config: dict[str, Any]) -> None:
    existing = {t.content for t in backend.get_added_tokens_decoder().values()}
    wanted: list[AddedToken | None] = [_added_token(config.get(name), True) for name in _NAMED_SPECIAL]
    for key in ("additional_special_tokens", "extra_special_tokens"):
        extra = config.get(key)
        if isinstance(extra, list):
            wanted += [_added_token(v, True) for v in extra]
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        wanted += [_added_token(spec, bool(spec.get("special", False))) for spec in decoder.values()
                   if isinstance(spec, dict)]
    missing = {t.content: t for t in wanted if t is not None and t.content not in existing}
    special = [t for t in missing.values() if t.special]
    normal = [t for t in missing.values() if not t.special]
    if special:
        backend.add_special_tokens(special)
    if normal:
        backend.add_tokens(normal)


def _set_post_processor(backend: tokenizers.Tokenizer, config: dict[str, Any], bos: str | None, eos: str | None) -> None:
    explicit = "add_bos_token" in config or "add_eos_token" in config
    if not explicit and backend.post_processor is not None:
        return
    add_bos = bool(config.get("add_bos_token", False)) and bos is not None and backend.token_to_id(bos) is not None
    add_eos = bool(config.get("add_eos_token", False)) and eos is not None and backend.token_to_id(eos) is not None
    single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
    pair = " ".join([single] + [f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos)
    special = [(t, backend.token_to_id(t)) for t, on in ((bos, add_bos), (eos, add_eos)) if on and t is not None]
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def _pick_template(path: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
        if template is None or isinstance(template, str):
            return template
    raise ModelLoadError(path, "chat_template must be a string or a list of {name, template}")


def _chat_template(directory: str, config: dict[str, Any]) -> str | None:
    jinja_path = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(jinja_path):
        if os.path.getsize(jinja_path) > _MAX_TEMPLATE_BYTES:
            raise ModelLoadError(jinja_path, f"larger than {_MAX_TEMPLATE_BYTES} bytes")
        try:
            with open(jinja_path, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(jinja_path, f"cannot read: {exc}") from exc
    json_path = os.path.join(directory, "chat_template.json")
    from_json = read_optional_json(json_path)
    if from_json is not None and "chat_template" in from_json:
        return _pick_template(json_path, from_json["chat_template"])
    return _pick_template(os.path.join(directory, "tokenizer_config.json"), config.get("chat_template"))


def _read_backend(directory: str) -> tokenizers.Tokenizer:
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(directory, "tokenizer.model")):
            raise ModelLoadError(directory, "only tokenizer.model (SentencePiece) found; a tokenizer.json is needed "
                                            "(transformers' AutoTokenizer(...).save_pretrained() writes one)")
        raise ModelLoadError(directory, "no tokenizer.json")
    try:
        return tokenizers.Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises plain Exception on malformed files
        raise ModelLoadError(path, f"invalid tokenizer: {exc}") from exc


def tokenizer_from_hf(directory: str, bos_token_id: int | None, eos_token_ids: list[int]) -> Tokenizer:
    """bos_token_id/eos_token_ids: the model's (generation_config.json/config.json), used when the
    tokenizer config names no token, and merged into the ids that end generation."""
    backend = _read_backend(directory)
    config = read_optional_json(os.path.join(directory, "tokenizer_config.json")) or {}
    _add_missing_tokens(backend, config)
    bos = _token_text(config.get("bos_token"))
    if bos is None and bos_token_id is not None:
        bos = backend.id_to_token(bos_token_id)
    eos = _token_text(config.get("eos_token"))
    if eos is None and eos_token_ids:
        eos = backend.id_to_token(eos_token_ids[0])
    eos_id = backend.token_to_id(eos) if eos is not None else None
    _set_post_processor(backend, config, bos, eos)
    return Tokenizer(backend, bos_token=bos, eos_token=eos,
                     eos_token_ids=[*eos_token_ids, *([eos_id] if eos_id is not None else [])],
                     pad_token=_token_text(config.get("pad_token")), unk_token=_token_text(config.get("unk_token")),
                     chat_template=_chat_template(directory, config))
