"""SLO configs from files (YAML/TOML/JSON) and from the compact ``--slo-class`` flag.

File shape (YAML; TOML and JSON are the same tree)::

    default_class: interactive          # optional: the first class
    allow_client_class: false           # optional
    classes:
      interactive: {ttft: 1s@p99, tpot: 100ms, e2e: 30s, availability: 99.5%, priority: 0, slack: 1.5}
      batch:       {ttft: 30s@p90, availability: 99%, priority: 10, slack: 4, max_queue_wait: 10m}

The whole tree may also sit under a top-level ``slo:`` key. Flag shape::

    --slo-class "interactive:ttft=1s@p99,tpot=100ms,e2e=30s,availability=99.5%,priority=0,slack=1.5"

Durations take a unit (ms, s, m, h) or are bare seconds in files; availability is a
percentage ("99.5%") or a fraction (0.995).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from servewise.slo.files import (
    ConfigError,
    check_known_keys,
    parse_bool,
    parse_duration_s,
    parse_fraction,
    parse_number,
    read_structured_file,
    require_mapping,
)
from servewise.slo.spec import SLOClass, SLOConfig

_TOP_KEYS = frozenset({"classes", "default_class", "allow_client_class"})
_PERCENTILE = re.compile(r"^\s*p([0-9]*\.?[0-9]+)\s*$")


def _parse_percentile(value: Any) -> float:
    if isinstance(value, str) and (match := _PERCENTILE.match(value)):
        return float(match.group(1))
    return parse_number(value)


def _parse_ttft(value: Any) -> tuple[float, float | None]:
    """'1s@p99' → (1.0, 99.0); '1s' → (1.0, None)."""
    if isinstance(value, str) and "@" in value:
        duration, _, percentile = value.partition("@")
        return parse_duration_s(duration), _parse_percentile(percentile)
    return parse_duration_s(value), None


def _integer(value: Any) -> int:
    return int(parse_number(value, integer=True))


# Field of SLOClass each config key fills, and how its value is parsed.
_CLASS_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "ttft_percentile": ("ttft_percentile", _parse_percentile),
    "tpot": ("tpot_s", parse_duration_s),
    "e2e": ("e2e_s", parse_duration_s),
    "availability": ("availability", parse_fraction),
    "priority": ("priority", _integer),
    "slack": ("admission_slack", parse_number),
    "max_queue_wait": ("max_queue_wait_s", parse_duration_s),
}
_KNOWN_CLASS_KEYS = frozenset({"ttft", *_CLASS_KEYS})


def slo_class_from_mapping(name: str, mapping: Mapping[str, Any], source: str, prefix: str = "") -> SLOClass:
    """One class from its key → value table; ``prefix`` is the dotted path used in error messages."""
    check_known_keys(mapping, _KNOWN_CLASS_KEYS, source, prefix)
    kwargs: dict[str, Any] = {"ttft_s": None}
    for key, value in mapping.items():
        try:
            if key == "ttft":
                kwargs["ttft_s"], percentile = _parse_ttft(value)
                if percentile is not None:
                    if "ttft_percentile" in mapping:
                        raise ValueError("percentile given twice (ttft=...@pNN and ttft_percentile)")
                    kwargs["ttft_percentile"] = percentile
            else:
                attr, parse = _CLASS_KEYS[key]
                kwargs[attr] = parse(value)
        except ValueError as e:
            raise ConfigError(source, f"{prefix}{key}", str(e)) from e
    try:
        return SLOClass(name=name, **kwargs)
    except ValueError as e:
        raise ConfigError(source, prefix.rstrip(".") or name, str(e)) from e


def slo_config_from_mapping(data: Any, source: str) -> SLOConfig:
    """A whole config from parsed file contents; ``source`` names the file in errors."""
    root = require_mapping(data, source, "(top level)")
    if set(root) == {"slo"}:
        root = require_mapping(root["slo"], source, "slo")
    check_known_keys(root, _TOP_KEYS, source, "")
    if "classes" not in root:
        raise ConfigError(source, "classes", "missing; define at least one SLO class")
    classes_table = require_mapping(root["classes"], source, "classes")
    if not classes_table:
        raise ConfigError(source, "classes", "empty; define at least one SLO class")
    classes = tuple(
        slo_class_from_mapping(str(name), require_mapping(table, source, f"classes.{name}"), source,
                               f"classes.{name}.")
        for name, table in classes_table.items())
    default = root.get("default_class", classes[0].name)
    try:
        allow = parse_bool(root.get("allow_client_class", False))
    except ValueError as e:
        raise ConfigError(source, "allow_client_class", str(e)) from e
    try:
        return SLOConfig(classes=classes, default_class=default, allow_client_class=allow)
    except ValueError as e:
        key = "default_class" if "default class" in str(e) else "classes"
        raise ConfigError(source, key, str(e)) from e


def load_slo_config(path: str | Path) -> SLOConfig:
    """Read an SLO config file (.yaml/.yml/.toml/.json); ConfigError names file, key and problem."""
    return slo_config_from_mapping(read_structured_file(path), str(path))


def parse_slo_class(text: str) -> SLOClass:
    """'interactive:ttft=1s@p99,tpot=100ms,...' → SLOClass (the ``--slo-class`` flag)."""
    source = f"--slo-class {text!r}"
    name, sep, body = text.partition(":")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(source, "(name)", "expected NAME:key=value,key=value,...")
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            raise ConfigError(source, part, "expected key=value")
        if key in mapping:
            raise ConfigError(source, key, "given twice")
        mapping[key] = value.strip()
    return slo_class_from_mapping(name, mapping, source)


def slo_config_from_flags(class_flags: Sequence[str], *, default_class: str | None = None,
                          allow_client_class: bool = False) -> SLOConfig:
    """A config from ``--slo-class`` flags: exactly the classes given (built-ins are not merged
    in); the default class is ``default_class`` or the first flag's."""
    if not class_flags:
        raise ValueError("give at least one --slo-class")
    classes = tuple(parse_slo_class(text) for text in class_flags)
    default = default_class if default_class is not None else classes[0].name
    return SLOConfig(classes=classes, default_class=default, allow_client_class=allow_client_class)
