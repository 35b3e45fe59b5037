"""How many engine replicas the fleet needs: autoscaling on SLO headroom.

Each replica publishes ``pressures`` (``record_autoscaling_stats``), each normalised so that
1.0 is "at the SLO limit" for the tightest class it serves:

- ``ttft``: predicted TTFT of a typical request (its recent mean uncached prompt) on it now,
  with the admission formula, over the class's TTFT target;
- ``tpot``: its recent mean step time over the class's TPOT target × the guard's margin
  (the TPOT guard's ratio: every running stream gets one token per step);
- ``queue``: seconds of queued prefill (tokens × fitted cost per token) over the TTFT target;
- ``burn``: the attainment burn rate over the last minute divided by ``burn_rate_limit``
  (counted only with ``min_burn_requests`` finished requests in that minute).

Fleet load ``L`` = mean over replicas of each one's largest pressure (the router balances them,
so the mean is the load per replica), plus the shed rate's share of the admitted rate. With ``n``
replicas the fleet needs ``ceil(n · L / target_load)``.

- Scale up fast: when ``L > upscale_load`` for ``upscale_delay_s``, to ``max(n + 1, needed)``
  at once.
- Scale down slowly: when one replica fewer would still run under ``target_load``
  (``L · n / (n - 1) < target_load``) for ``downscale_delay_s``, by one replica.
- No oscillation: after an upscale ``L ≈ target_load``, and a downscale needs the load at n-1
  under ``target_load`` too, so the band between ``target_load`` and ``upscale_load`` holds
  steady load still. Every decision resets the other direction's timer.

Not modelled: replica start-up time (scale-ups land after the model loads), heterogeneous
replicas, and pressure hidden by admission (a replica that sheds keeps its own queue short;
the shed rate term brings that demand back).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ScalingConfig:
    min_replicas: int = 1
    max_replicas: int = 1
    target_load: float = 0.7  # load per replica after a scaling decision (headroom 30%)
    upscale_load: float = 1.0  # above this the fleet is short of replicas
    upscale_delay_s: float = 3.0  # sustained that long before scaling up (one noisy sample is not load)
    downscale_delay_s: float = 60.0  # sustained that long before scaling down
    burn_rate_limit: float = 2.0  # burn rate that counts as load 1.0
    min_burn_requests: int = 20  # finished requests in the minute before the burn rate counts

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 1 ≤ min_replicas ≤ max_replicas, got {self.min_replicas}..{self.max_replicas}")
        if not 0 < self.target_load < self.upscale_load:
            raise ValueError("need 0 < target_load < upscale_load")
        if self.upscale_delay_s < 0 or self.downscale_delay_s < 0 or self.burn_rate_limit <= 0:
            raise ValueError("delays must be ≥ 0 and burn_rate_limit > 0")


@dataclass(frozen=True)
class ReplicaPressure:
    """One replica's published signals (each 1.0 = at the SLO limit) and rates."""

    ttft: float = 0.0
    tpot: float = 0.0
    queue: float = 0.0
    burn: float = 0.0
    shed_rps: float = 0.0  # requests its admission shed per second, recently
    admitted_rps: float = 0.0  # requests it admitted per second, recently

    @property
    def load(self) -> float:
        return max(self.ttft, self.tpot, self.queue, self.burn)

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float], config: ScalingConfig) -> ReplicaPressure:
        """From a replica's ``record_autoscaling_stats`` (``ReplicaServer.autoscaling_stats``)."""
        enough = metrics.get("burn_requests", 0.0) >= config.min_burn_requests
        burn = metrics.get("burn_rate", 0.0) / config.burn_rate_limit if enough else 0.0
        return cls(ttft=float(metrics.get("ttft", 0.0)), tpot=float(metrics.get("tpot", 0.0)),
                   queue=float(metrics.get("queue", 0.0)), burn=burn,
                   shed_rps=float(metrics.get("shed_rps", 0.0)), admitted_rps=float(metrics.get("admitted_rps", 0.0)))


@dataclass(frozen=True)
class ScalingState:
    """What the policy remembers between calls (Ray keeps it as a dict: ``asdict``/``from_dict``)."""

    up_since_s: float | None = None  # when the fleet first looked short, in this stretch
    down_since_s: float | None = None  # when one replica fewer first looked enough

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ScalingState:
        def num(key: str) -> float | None:
            value = data.get(key)
            return float(value) if isinstance(value, (int, float)) else None

        return cls(up_since_s=num("up_since_s"), down_since_s=num("down_since_s"))


@dataclass(frozen=True)
class ScalingDecision:
    num_replicas: int
    state: ScalingState
    load: float  # fleet load L
    reason: str  # one line, for the log


def fleet_load(pressures: Sequence[ReplicaPressure]) -> float:
    """Mean of each replica's largest pressure, plus the demand its admission shed."""
    if not pressures:
        return 0.0
    load = sum(p.load for p in pressures) / len(pressures)
    shed = sum(p.shed_rps for p in pressures)
    admitted = sum(p.admitted_rps for p in pressures)
    if shed > 0:
        load *= 1.0 + shed / max(admitted, 1e-9)
    return load


def decide(config: ScalingConfig, target: int, running: int, pressures: Sequence[ReplicaPressure],
           state: ScalingState, now_s: float) -> ScalingDecision:
    """The replica count to ask for now (module docstring). ``target``: the count asked for last;
    ``running``: replicas serving (and publishing ``pressures``); fewer while new ones start."""
    bounded_target = min(max(target, config.min_replicas), config.max_replicas)
    if bounded_target != target:
        return ScalingDecision(bounded_target, ScalingState(), 0.0,
                               f"out of bounds [{config.min_replicas}, {config.max_replicas}]")
    if running < target:  # a scale-up is still starting: its load signal would count twice
        return ScalingDecision(target, state, fleet_load(pressures), f"waiting for {target - running} to start")
    n = max(running, 1)
    load = fleet_load(pressures)
    if load > config.upscale_load and target < config.max_replicas:
        since = state.up_since_s if state.up_since_s is not None else now_s
        if now_s - since < config.upscale_delay_s:
            return ScalingDecision(target, ScalingState(up_since_s=since), load, f"load {load:.2f}: up in a moment")
        needed = math.ceil(n * load / config.target_load - 1e-9)
        new = min(max(target + 1, needed), config.max_replicas)
        return ScalingDecision(new, ScalingState(), load, f"load {load:.2f} > {config.upscale_load:g} for "
                                                          f"{now_s - since:.0f} s: {target} -> {new} replicas")
    if target > config.min_replicas and load * n / (n - 1 if n > 1 else 1) < config.target_load:
        since = state.down_since_s if state.down_since_s is not None else now_s
        if now_s - since < config.downscale_delay_s:
            return ScalingDecision(target, ScalingState(down_since_s=since), load, f"load {load:.2f}: down later")
        return ScalingDecision(target - 1, ScalingState(), load,
                               f"load {load:.2f} would be {load * n / max(n - 1, 1):.2f} < {config.target_load:g} "
                               f"on {target - 1}: {target} -> {target - 1} replicas")
    return ScalingDecision(target, ScalingState(), load, f"load {load:.2f}: steady")
