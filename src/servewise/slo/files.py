"""Reading operator config files (YAML, TOML, JSON) and the value syntaxes they share.

Every problem is a ``ConfigError`` that names the source (a file path or a flag),
the key and what is wrong, so an operator can fix the file without reading code.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m|h)\s*$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PERCENT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*%\s*$")


class ConfigError(ValueError):
    """A config file or flag is malformed; the message names source, key and problem."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")
        self.source = source  # file path or flag text
        self.key = key  # dotted path of the offending key, e.g. "classes.batch.ttft"
        self.problem = problem


def read_structured_file(path: str | Path) -> Any:
    """Parse a .yaml/.yml, .toml or .json file into plain Python objects."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), "(file)", f"cannot read: {e.strerror or e}") from e
    suffix = p.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        if suffix == ".toml":
            return _load_toml(text)
        if suffix == ".json":
            return json.loads(text)
    except ConfigError:
        raise
    except Exception as e:  # each parser has its own error class; all mean "malformed file"
        raise ConfigError(str(p), "(file)", f"not valid {suffix[1:].upper()}: {e}") from e
    raise ConfigError(str(p), "(file)", f"unknown format {suffix!r}; use .yaml, .yml, .toml or .json")


def _load_toml(text: str) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as e:
            raise ValueError("reading TOML needs Python ≥ 3.11 or the tomli package") from e
    return tomllib.loads(text)


def require_mapping(value: Any, source: str, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(source, key, f"expected a table/mapping, got {type(value).__name__}")
    return value


def check_known_keys(mapping: Mapping[str, Any], known: set[str] | frozenset[str], source: str,
                     prefix: str) -> None:
    for key in mapping:
        if key not in known:
            raise ConfigError(source, f"{prefix}{key}", f"unknown key; known keys: {', '.join(sorted(known))}")


def parse_duration_s(value: Any) -> float:
    """'100ms' → 0.1, '1.5s' → 1.5, '2m' → 120; a bare number means seconds. Must be > 0."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 1s or 100ms, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    else:
        raise ValueError(f"expected a duration with a unit (ms, s, m, h), like 1s or 100ms; got {value!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def parse_fraction(value: Any) -> float:
    """'99.5%' → 0.995; a bare number must already be a fraction in (0, 1)."""
    if isinstance(value, str) and (match := _PERCENT.match(value)):
        fraction = float(match.group(1)) / 100.0
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        fraction = float(value)
    else:
        raise ValueError(f"expected a percentage like 99.5% or a fraction like 0.995, got {value!r}")
    if not isinstance(value, str) and fraction > 1.0:
        raise ValueError(f"a bare number is a fraction in (0, 1); write a percentage with %, like '{value}%'")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"must be strictly between 0 and 1 (0% and 100%), got {value!r}")
    return fraction


def parse_number(value: Any, *, integer: bool = False) -> float:
    """A number, or a string holding one (flags give strings); '100k' and '2M' are accepted."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        scale = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:], 1.0)
        try:
            number = float(text[:-1] if scale != 1.0 else text) * scale
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise ValueError(f"expected a number, got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    if integer and number != int(number):
        raise ValueError(f"expected an integer, got {value!r}")
    return number


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")
