"""Hugging Face ``config.json`` (+ ``generation_config.json``) -> `ModelArchConfig`."""

from __future__ import annotations

import json
import os
from typing import Any

from servewise.config import SUPPORTED_ARCHITECTURES, ModelArchConfig
from servewise.errors import ModelLoadError

# HF class name -> our architecture; model_type is accepted too.
_ARCHITECTURE_CLASSES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
# transformers' defaults where a config may omit the field.
_DEFAULT_CONTEXT = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768}
_DEFAULT_RMS_NORM_EPS = 1e-6
_DEFAULT_ROPE_THETA = 10000.0
_MAX_JSON_BYTES = 16 * 1024 * 1024  # config files are a few kB; refuse to parse a giant one


def read_optional_json(path: str) -> dict[str, Any] | None:
    """A JSON object from `path`, None if there is no such file; ModelLoadError if it is invalid."""
    if not os.path.isfile(path):
        return None
    if os.path.getsize(path) > _MAX_JSON_BYTES:
        raise ModelLoadError(path, f"larger than {_MAX_JSON_BYTES} bytes; not a config file")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(path, f"invalid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(path, f"expected a JSON object, got {type(value).__name__}")
    return value


def read_json(path: str) -> dict[str, Any]:
    value = read_optional_json(path)
    if value is None:
        raise ModelLoadError(path, "file not found")
    return value


def _architecture(path: str, config: dict[str, Any]) -> str:
    classes = config.get("architectures") or []
    for name in classes if isinstance(classes, list) else []:
        if name in _ARCHITECTURE_CLASSES:
            return _ARCHITECTURE_CLASSES[name]
    model_type = config.get("model_type")
    if model_type in SUPPORTED_ARCHITECTURES:
        return str(model_type)
    found = model_type or (classes[0] if isinstance(classes, list) and classes else None)
    if found is None:
        raise ModelLoadError(path, "missing field model_type (and no known architectures)")
    raise ModelLoadError(path, f"unknown architecture {found!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")


def _field(path: str, config: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = config.get(name)
    if value is None:
        if default is None:
            raise ModelLoadError(path, f"missing field {name}")
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ModelLoadError(path, f"field {name} must be {kind.__name__}, got {value!r}")
    return value


def _rope(path: str, config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and rope_scaling, from the top level or recent configs' `rope_parameters`."""
    params = config.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise ModelLoadError(path, "field rope_parameters must be an object")
    params = dict(params or {})
    theta = config.get("rope_theta", params.pop("rope_theta", None))
    theta = _field(path, {"rope_theta": theta}, "rope_theta", float, _DEFAULT_ROPE_THETA)
    scaling = config.get("rope_scaling") or params or None
    if scaling is not None:
        if not isinstance(scaling, dict):
            raise ModelLoadError(path, "field rope_scaling must be an object")
        scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
        if scaling.get("rope_type", scaling.get("type", "default")) == "default":
            scaling = None
    return theta, scaling


def _token_ids(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def special_ids(directory: str) -> tuple[int | None, list[int]]:
    """bos id and eos ids: generation_config.json overrides config.json."""
    config = read_optional_json(os.path.join(directory, "config.json")) or {}
    generation = read_optional_json(os.path.join(directory, "generation_config.json")) or {}
    bos = _token_ids(generation.get("bos_token_id", config.get("bos_token_id")))
    eos = _token_ids(generation.get("eos_token_id")) or _token_ids(config.get("eos_token_id"))
    return (bos[0] if bos else None), eos


def arch_config_from_hf(directory: str) -> ModelArchConfig:
    """Hyperparameters from config.json; bos/eos ids from generation_config.json or config.json."""
    path = os.path.join(directory, "config.json")
    config = read_json(path)
    architecture = _architecture(path, config)
    hidden = _field(path, config, "hidden_size", int)
    num_heads = _field(path, config, "num_attention_heads", int)
    theta, scaling = _rope(path, config)
    context = _field(path, config, "max_position_embeddings", int, _DEFAULT_CONTEXT[architecture])
    window = config.get("sliding_window")
    uses_window = config.get("use_sliding_window", architecture != "qwen2")
    if uses_window and isinstance(window, int) and 0 < window < context:
        # We have no sliding-window attention; within the window full attention is identical.
        context = window
    bos, eos = special_ids(directory)
    try:
        return ModelArchConfig(
            architecture=architecture,
            vocab_size=_field(path, config, "vocab_size", int),
            hidden_size=hidden,
            intermediate_size=_field(path, config, "intermediate_size", int),
            num_hidden_layers=_field(path, config, "num_hidden_layers", int),
            num_attention_heads=num_heads,
            num_key_value_heads=_field(path, config, "num_key_value_heads", int, num_heads),
            head_dim=_field(path, config, "head_dim", int, hidden // num_heads if num_heads > 0 else 0),
            rms_norm_eps=_field(path, config, "rms_norm_eps", float, _DEFAULT_RMS_NORM_EPS),
            rope_theta=theta,
            max_position_embeddings=context,
            tie_word_embeddings=_field(path, config, "tie_word_embeddings", bool, False),
            attention_bias=architecture == "qwen2" or _field(path, config, "attention_bias", bool, False),
            rope_scaling=scaling,
            bos_token_id=bos,
            eos_token_ids=tuple(eos),
        )
    except ValueError as exc:
        raise ModelLoadError(path, f"invalid hyperparameters: {exc}") from exc
