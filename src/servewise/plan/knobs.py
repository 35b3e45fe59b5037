"""The configurations a plan compares: engine and fleet knobs, and the ``--grid`` over them.

A grid is ``KEY=V1,V2`` per knob (repeat ``--grid``); the plan evaluates every
combination. Engine limits are validated by the engine's own config classes.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from servewise.bench.slo import SloSpec
from servewise.config import CacheConfig, DeviceConfig, EngineConfig, ModelArchConfig, SchedulerConfig
from servewise.engine.llm_engine import kv_capacity, model_dtype, resolve_kv_dtype
from servewise.slo import SLOClass, default_slo_config, parse_slo_class


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1", "enforce"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"expected on or off, got {text!r}")


# knob -> how its grid values are parsed
GRID_KEYS: dict[str, Callable[[str], Any]] = {
    "max_num_seqs": int, "max_num_batched_tokens": int, "replicas": int, "linear_backend": str, "threads": int,
    "admission": _bool, "queue_policy": str, "prefix_caching": _bool, "block_size": int, "num_kv_blocks": int,
}


@dataclass(frozen=True)
class Knobs:
    """One candidate configuration: a replica's engine and how many replicas."""

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    replicas: int = 1  # independent engines behind the fleet's router
    linear_backend: str = "auto"  # picks the profile (step costs differ per backend)
    threads: int = 2  # picks the profile too
    admission: bool = True  # predictive admission enforced (429) or only observed
    queue_policy: str = "fcfs"
    prefix_caching: bool = True
    block_size: int = 16
    kv_cache_memory_bytes: int = 1 << 30
    num_kv_blocks: int | None = None  # overrides kv_cache_memory_bytes
    kv_cache_dtype: str = "auto"
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be ≥ 1, got {self.replicas}")
        self.engine_config("cpu")  # the engine's own checks of every engine knob

    def engine_config(self, device: str) -> EngineConfig:
        return EngineConfig(
            cache=CacheConfig(block_size=self.block_size, kv_cache_memory_bytes=self.kv_cache_memory_bytes,
                              num_blocks=self.num_kv_blocks, enable_prefix_caching=self.prefix_caching,
                              kv_cache_dtype=self.kv_cache_dtype),
            scheduler=SchedulerConfig(max_num_seqs=self.max_num_seqs,
                                      max_num_batched_tokens=self.max_num_batched_tokens,
                                      max_model_len=self.max_model_len, queue_policy=self.queue_policy),
            device=DeviceConfig(device=device, linear_backend=self.linear_backend, num_threads=self.threads))

    def label(self, keys: Sequence[str]) -> str:
        """The values of ``keys`` (the knobs the grid varies), e.g. 'max_num_seqs=16 replicas=2'."""
        parts = []
        for key in keys:
            value = getattr(self, key)
            parts.append(f"{key}={('on' if value else 'off') if isinstance(value, bool) else value}")
        return " ".join(parts) or "base"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """['max_num_seqs=16,64', 'replicas=1,2'] -> {knob: values}; ValueError says what is wrong."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in GRID_KEYS:
            raise ValueError(f"bad --grid {spec!r}: expected KNOB=V1,V2,... with KNOB one of {', '.join(GRID_KEYS)}")
        if key in grid:
            raise ValueError(f"--grid names {key} twice")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not items:
            raise ValueError(f"--grid {key}= lists no values: the grid would be empty")
        try:
            parsed = [GRID_KEYS[key](v) for v in items]
        except ValueError as exc:
            raise ValueError(f"bad --grid {key} value: {exc}") from None
        grid[key] = list(dict.fromkeys(parsed))
    return grid


def expand_grid(base: Knobs, grid: dict[str, list[Any]]) -> list[Knobs]:
    """Every combination of the grid's values on top of ``base`` (invalid ones raise ValueError)."""
    keys = list(grid)
    cells = []
    for values in itertools.product(*(grid[k] for k in keys)):
        try:
            cells.append(dataclasses.replace(base, **dict(zip(keys, values, strict=True))))
        except ValueError as exc:
            raise ValueError(f"grid cell {dict(zip(keys, values, strict=True))}: {exc}") from None
    return cells


@dataclass(frozen=True)
class EngineSpec:
    """What the simulator needs to build one replica's scheduler and KV-cache manager."""

    scheduler: SchedulerConfig
    num_blocks: int
    block_size: int
    enable_prefix_caching: bool
    max_model_len: int  # prompt + output tokens a request may need (else 400)


def engine_spec(knobs: Knobs, arch: ModelArchConfig, device: str) -> EngineSpec:
    """The pool and limits an engine with these knobs gets for this model (the engine's own rules)."""
    config = knobs.engine_config(device)
    kv_dtype = resolve_kv_dtype(config, model_dtype(config.device, torch.device(device)))
    num_blocks, max_model_len = kv_capacity(config, arch, kv_dtype)
    return EngineSpec(config.scheduler, num_blocks, knobs.block_size, knobs.prefix_caching, max_model_len)


def arch_from_dict(data: dict[str, Any]) -> ModelArchConfig:
    values = dict(data)
    values["eos_token_ids"] = tuple(values.get("eos_token_ids", ()))
    return ModelArchConfig(**values)


def server_slo_class(slo: SloSpec, slack: float = 1.0) -> tuple[SLOClass, str | None]:
    """The SLO class the server runs with for these targets, and the ``--slo-class`` flag that gives it
    (None: no targets, the server's built-in default class)."""
    if slo.ttft_s is None and slo.tpot_s is None and slo.e2e_s is None:
        config = default_slo_config()
        return config[config.default_class], None
    parts = [f"{name}={value:g}s" + ("@p99" if name == "ttft" else "")
             for name, value in (("ttft", slo.ttft_s), ("tpot", slo.tpot_s), ("e2e", slo.e2e_s)) if value is not None]
    flag = "interactive:" + ",".join([*parts, f"slack={slack:g}"])
    return parse_slo_class(flag), flag
