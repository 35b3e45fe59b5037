"""API keys → tenants: who is calling, under which SLO class and limits.

Keys come from a file or from an env-var string (the CLI reads the variable and
passes the string). Only SHA-256 digests of keys are kept in memory.

Lookup hashes the presented key and compares its digest with *every* stored digest
through ``hmac.compare_digest``, without stopping at a match, so the time taken does
not depend on which key matched or where a wrong key first differs. Hashing first also
hides the stored keys' lengths (all digests are 32 bytes). Comparing against every key
is fine at this scale: a compare of 32 bytes costs well under a microsecond, so even
10,000 keys add a few milliseconds to a request that then runs a model.

File (YAML; TOML and JSON take the same tree)::

    keys:
      sk-alice-1:                       # the key itself, or "sha256:<hex digest>"
        tenant: alice                   # default: "default"
        slo_class: interactive          # default: the SLO config's default class
        admin: false
        requests_per_minute: 600        # each limit is optional (none = unlimited)
        tokens_per_minute: 200k
        concurrent_requests: 8

Every key of one tenant must give the same class, admin flag and limits (or leave them
out on all but one). Env string: entries separated by ",", each ``KEY`` or
``KEY=TENANT`` followed by ``;field=value`` parts and a bare ``;admin``, e.g.
``sk-1=alice;slo_class=interactive;rpm=60;tpm=100k;concurrency=4;admin, sk-2=bob``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servewise.errors import AuthenticationError, PermissionDeniedError
from servewise.slo.files import (
    ConfigError,
    check_known_keys,
    parse_bool,
    parse_number,
    read_structured_file,
    require_mapping,
)

DEFAULT_TENANT = "default"
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_LIMIT_KEYS = ("requests_per_minute", "tokens_per_minute", "concurrent_requests")
_ENTRY_KEYS = frozenset({"tenant", "slo_class", "admin", *_LIMIT_KEYS})
_ENV_ALIASES = {"rpm": "requests_per_minute", "tpm": "tokens_per_minute", "concurrency": "concurrent_requests",
                "class": "slo_class"}


@dataclass(frozen=True)
class TenantLimits:
    """Per-tenant limits; None = unlimited."""

    requests_per_minute: int | None = None  # request starts per rolling minute (token bucket)
    tokens_per_minute: int | None = None  # prompt + max_tokens reserved per rolling minute (token bucket)
    concurrent_requests: int | None = None  # requests in flight at once

    def __post_init__(self) -> None:
        for name in _LIMIT_KEYS:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")


@dataclass(frozen=True)
class Tenant:
    name: str  # the label on usage metrics; shared by all of the tenant's keys
    slo_class: str | None = None  # None = the SLO config's default class
    limits: TenantLimits = field(default_factory=TenantLimits)
    is_admin: bool = False  # may call admin endpoints

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDeniedError(f"tenant {self.name!r} is not allowed to use admin endpoints")


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeyStore:
    """Digest → tenant; ``authenticate`` is constant-time in which key matched."""

    def __init__(self, entries: Iterable[tuple[bytes, Tenant]]) -> None:
        self._digests: list[bytes] = []
        self._tenants: list[Tenant] = []
        seen: set[bytes] = set()  # start-up only, so an ordinary (not constant-time) set is fine
        for digest, tenant in entries:
            if len(digest) != 32:
                raise ValueError("key digests must be 32-byte SHA-256 digests")
            if digest in seen:
                raise ValueError(f"the same API key is listed twice (tenant {tenant.name!r})")
            seen.add(digest)
            self._digests.append(digest)
            self._tenants.append(tenant)

    @classmethod
    def from_keys(cls, keys: Mapping[str, Tenant]) -> ApiKeyStore:
        return cls((key_digest(k), t) for k, t in keys.items())

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def tenants(self) -> tuple[Tenant, ...]:
        return tuple({t.name: t for t in self._tenants}.values())

    def authenticate(self, presented_key: str | None) -> Tenant:
        """The tenant of ``presented_key`` (the bearer token); AuthenticationError (401) otherwise."""
        if not presented_key:
            raise AuthenticationError("missing API key: send it as 'Authorization: Bearer <key>'")
        digest = key_digest(presented_key)
        found: Tenant | None = None
        for stored, tenant in zip(self._digests, self._tenants, strict=True):
            if hmac.compare_digest(digest, stored):  # no early exit: every key is compared
                found = tenant
        if found is None:
            raise AuthenticationError("invalid API key")
        return found

    def check_classes(self, class_names: Iterable[str]) -> None:
        """Startup check: every key's SLO class exists in the SLO config."""
        known = set(class_names)
        for tenant in self.tenants:
            if tenant.slo_class is not None and tenant.slo_class not in known:
                raise ValueError(f"tenant {tenant.name!r} uses SLO class {tenant.slo_class!r}, "
                                 f"not one of {sorted(known)}")


def _tenant_fields(raw: Mapping[str, Any], source: str, prefix: str) -> dict[str, Any]:
    check_known_keys(raw, _ENTRY_KEYS, source, prefix)
    out: dict[str, Any] = {"tenant": DEFAULT_TENANT}
    for name, value in raw.items():
        try:
            if name in _LIMIT_KEYS:
                out[name] = int(parse_number(value, integer=True))
            elif name == "admin":
                out[name] = parse_bool(value)
            elif not (isinstance(value, str) and value.strip()):
                raise ValueError("expected a non-empty string")
            else:
                out[name] = value.strip()
        except ValueError as e:
            raise ConfigError(source, f"{prefix}{name}", str(e)) from e
    return out


def _build_store(entries: list[tuple[str, str, dict[str, Any]]], source: str) -> ApiKeyStore:
    """entries: (key text, error path, parsed fields); merges each tenant's settings."""
    tenants: dict[str, dict[str, Any]] = {}
    for _, path, fields in entries:
        settings = tenants.setdefault(fields["tenant"], {})
        for name, value in fields.items():
            if name != "tenant" and settings.setdefault(name, value) != value:
                raise ConfigError(source, f"{path}{name}",
                                  f"tenant {fields['tenant']!r} has {name}={settings[name]!r} on another key")
    built: dict[str, Tenant] = {}
    for name, s in tenants.items():
        try:
            built[name] = Tenant(name=name, slo_class=s.get("slo_class"), is_admin=s.get("admin", False),
                                 limits=TenantLimits(**{k: s[k] for k in _LIMIT_KEYS if k in s}))
        except ValueError as e:
            raise ConfigError(source, f"tenant {name}", str(e)) from e
    pairs = []
    for key, _, fields in entries:
        match = _HASHED.match(key)
        digest = bytes.fromhex(match.group(1)) if match else key_digest(key)
        pairs.append((digest, built[fields["tenant"]]))
    try:
        return ApiKeyStore(pairs)
    except ValueError as e:
        raise ConfigError(source, "keys", str(e)) from e


def api_keys_from_mapping(data: Any, source: str) -> ApiKeyStore:
    root = require_mapping(data, source, "(top level)")
    check_known_keys(root, frozenset({"keys"}), source, "")
    keys = require_mapping(root.get("keys"), source, "keys")
    if not keys:
        raise ConfigError(source, "keys", "no API keys defined")
    entries = []
    for i, (key, raw) in enumerate(keys.items()):
        path = f"keys[{i}]."  # the key itself is a secret: never in an error message
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(source, path.rstrip("."), "API keys must be non-empty strings")
        entries.append((key.strip(), path, _tenant_fields(require_mapping(raw or {}, source, path), source, path)))
    return _build_store(entries, source)


def load_api_keys(path: str | Path) -> ApiKeyStore:
    """API keys from a .yaml/.yml/.toml/.json file (format in the module docstring)."""
    return api_keys_from_mapping(read_structured_file(path), str(path))


def parse_api_keys(text: str, source: str = "SERVEWISE_API_KEYS") -> ApiKeyStore:
    """API keys from the compact env-var string (format in the module docstring)."""
    entries = []
    for i, entry in enumerate(filter(None, (e.strip() for e in text.split(",")))):
        path = f"entry[{i}]."
        head, *parts = [p.strip() for p in entry.split(";")]
        key, _, tenant = head.partition("=")
        raw: dict[str, Any] = {"tenant": tenant.strip()} if tenant.strip() else {}
        for part in filter(None, parts):
            name, eq, value = part.partition("=")
            name = _ENV_ALIASES.get(name.strip(), name.strip())
            raw[name] = value.strip() if eq else True
        if not key.strip():
            raise ConfigError(source, path.rstrip("."), "empty API key")
        entries.append((key.strip(), path, _tenant_fields(raw, source, path)))
    if not entries:
        raise ConfigError(source, "(value)", "no API keys defined")
    return _build_store(entries, source)
