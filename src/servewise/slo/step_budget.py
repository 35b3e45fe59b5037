"""How many prompt tokens one engine step may compute: the SLO-derived step budget.

One rule, shared by the engine's scheduler and by every TTFT prediction made outside it
(admission, the fleet router, the planner), so that what is predicted is what runs.

A step computes ``D`` decode tokens (one per running sequence, plus the draft tokens it
verifies when speculating) and ``P`` prefill tokens, and costs ``a + b·P + c·D``
(``StepCost``, fitted online). With ``B = max_num_batched_tokens`` and a step target
``T = min(TPOT of the running sequences) × margin``:

    P = clamp(⌊(T − a − c·D) / b⌋, min(P_min, B − D), B − D)

- no decode running (``D = 0``), or no running sequence has a TPOT target: ``P = B − D``,
  the full budget (Sarathi-Serve's fixed budget is this rule without a target);
- under decode load, prefill chunks shrink so that the step stays within ``T``;
- ``P_min`` (``min_prefill_tokens``) keeps prefill moving when decodes alone fill ``T``:
  without it a queued request would wait for a decode to finish before it could start.

Not modelled: the cost's non-linearities (kernels that change with the number of rows in a
step, attention that grows with the context), so a step may overshoot ``T`` by the fit's
error; decode-only steps slower than ``T`` (the admission's TPOT guard sheds before that);
the step in progress.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

from servewise.config import SchedulerConfig
from servewise.slo.cost_model import StepCost, StepCostModel

DEFAULT_MIN_PREFILL_TOKENS: int = SchedulerConfig.min_prefill_chunk_tokens  # the engine's default


def prefill_budget(num_decode_tokens: int, max_num_batched_tokens: int, cost: StepCost,
                   step_target_s: float | None, min_prefill_tokens: int = DEFAULT_MIN_PREFILL_TOKENS) -> int:
    """Prompt tokens a step may compute next to ``num_decode_tokens`` decode tokens (module docstring).

    ``step_target_s``: the tightest running TPOT × margin, or None (no target: the full budget)."""
    room = max(max_num_batched_tokens - num_decode_tokens, 0)
    if step_target_s is None or num_decode_tokens <= 0 or room == 0:
        return room
    if cost.prefill_s_per_token <= 0:
        return room
    spare_s = max(step_target_s - cost.step_s(0, num_decode_tokens), 0.0)
    fit = math.floor(min(spare_s / cost.prefill_s_per_token, room))
    return max(fit, min(min_prefill_tokens, room))


def step_target_for(tpot_targets_s: Iterable[float | None], margin: float) -> float | None:
    """The tightest TPOT target × margin, or None when no target is given."""
    tightest = min((t for t in tpot_targets_s if t is not None), default=None)
    return None if tightest is None else tightest * margin


class StepBudgetPolicy(Protocol):
    """What the scheduler asks each step: how many prompt tokens fit next to the decodes."""

    def prefill_tokens(self, num_decode_tokens: int, tightest_tpot_s: float | None) -> int: ...


class FixedStepBudget:
    """Every step may compute up to ``max_num_batched_tokens``, decodes first (the rule without a target)."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.max_num_batched_tokens = config.max_num_batched_tokens

    def prefill_tokens(self, num_decode_tokens: int, tightest_tpot_s: float | None) -> int:
        return max(self.max_num_batched_tokens - num_decode_tokens, 0)


class SLOStepBudget:
    """The rule above with ``T = tightest running TPOT × config.step_tpot_margin`` and the cost fitted
    by ``cost_model`` (fed by the engine with its own steps; a planner feeds its own)."""

    def __init__(self, config: SchedulerConfig, cost_model: StepCostModel) -> None:
        self.config = config
        self.cost_model = cost_model

    def prefill_tokens(self, num_decode_tokens: int, tightest_tpot_s: float | None) -> int:
        c = self.config
        target = None if tightest_tpot_s is None else tightest_tpot_s * c.step_tpot_margin
        return prefill_budget(num_decode_tokens, c.max_num_batched_tokens, self.cost_model.cost(), target,
                              c.min_prefill_chunk_tokens)


def create_step_budget(config: SchedulerConfig, cost_model: StepCostModel) -> StepBudgetPolicy:
    if config.step_budget == "fixed":
        return FixedStepBudget(config)
    return SLOStepBudget(config, cost_model)
