"""How long one engine step takes, from the shape of what the scheduler put in it.

Model (fitted by ``servewise profile`` on this machine, see ``fit.py``)::

    step_s    = forward_s + host_s
    forward_s = T(tokens) + S(sampled) + p · paged_pairs + d · dense_pairs
    T(n)      = a_r + b_r · n     for the row regime r that n falls in (n ≥ 1)
    S(n)      = e_r + f_r · n     (n ≥ 1; S(0) = 0)
    host_s    = h0 + h1 · sequences

- tokens: tokens computed in the step, prefill chunks and decodes alike (every linear
  layer runs on that many rows): ``a`` is the fixed cost of a step, ``b`` the cost per token;
- sampled: sequences that sample a token this step (their rows go through the lm_head
  and the sampler): ``f`` is the cost per decode sequence;
- paged_pairs: (token, context token) pairs attended through the paged kernel (decodes,
  short chunks, whole small steps); ``p`` is the cost per context token of a decode;
  there are two values, for steps the fused small-step decoder runs and for the others;
- dense_pairs: causal (query, key) pairs of the chunks that use dense attention (prefill);
- row regimes: the kernels change with the number of rows (on CPU with ``auto``: the
  native int8 kernel up to 16 rows, a GEMM padded to 64 rows up to 64, plain GEMM above),
  so T and S are piecewise linear, with the boundaries the profile read from the engine;
- host_s: the engine loop's own work between forwards (schedule, apply results,
  detokenize, publish stats), per step and per sequence in it.

Which chunk uses which attention path is the model runner's own rule
(``uses_paged_attention``), so a change there changes the prediction.

Not modelled: other processes sharing the cores (the profile is taken on a quiet machine,
or it is not), frequency scaling, cache effects that depend on which blocks are read,
the server's HTTP work competing with the engine for the CPU, CUDA-graph buckets.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from servewise.engine.model_runner import MAX_ALL_PAGED_STEP_TOKENS, uses_paged_attention
from servewise.engine.scheduler import ScheduledChunk


@dataclass(frozen=True)
class StepShape:
    """What the cost of one step depends on; read before the step's results are applied."""

    num_tokens: int  # tokens computed (prefill chunks + decodes)
    num_sampled: int  # sequences that sample a token (their chunk reaches their last known token)
    num_seqs: int  # sequences in the step
    paged_pairs: int  # Σ context tokens attended by tokens through the paged kernel
    dense_pairs: int  # Σ causal (query, key) pairs of chunks through dense attention

    @property
    def fused(self) -> bool:
        """A step small enough for the runner to compute entirely through the paged kernel."""
        return self.num_tokens <= MAX_ALL_PAGED_STEP_TOKENS


def shape_of(chunks: Iterable[ScheduledChunk]) -> StepShape:
    """The shape of a step (a ScheduleOutput's chunks, before the step is applied)."""
    chunks = list(chunks)
    num_tokens = sum(c.num_new_tokens for c in chunks)
    sampled = paged = dense = 0
    for chunk in chunks:
        s, n = chunk.request.num_computed_tokens, chunk.num_new_tokens
        if s + n == chunk.request.num_tokens:
            sampled += 1
        pairs = n * s + n * (n + 1) // 2  # token i of the chunk attends to s + i positions
        if uses_paged_attention(chunk, num_tokens):
            paged += pairs
        else:
            dense += pairs
    return StepShape(num_tokens, sampled, len(chunks), paged, dense)


@dataclass(frozen=True)
class RowCost:
    """A kernel family whose price changes with its number of rows: ``fixed_s[r] + per_row_s[r] · rows``
    in regime r. Regime r holds rows in (boundaries[r-1], boundaries[r]]; the last is unbounded."""

    boundaries: tuple[int, ...]  # ascending row counts where the kernels change
    fixed_s: tuple[float, ...]  # one per regime: len(boundaries) + 1
    per_row_s: tuple[float, ...]

    def __post_init__(self) -> None:
        num = len(self.boundaries) + 1
        if len(self.fixed_s) != num or len(self.per_row_s) != num:
            raise ValueError(f"a row cost with {len(self.boundaries)} boundaries needs {num} coefficients per term")
        if list(self.boundaries) != sorted(set(self.boundaries)) or any(b < 1 for b in self.boundaries):
            raise ValueError(f"row regime boundaries must be ascending positive integers, got {self.boundaries}")
        if any(c < 0 for c in self.fixed_s + self.per_row_s):
            raise ValueError("step-cost coefficients must be ≥ 0")

    def regime(self, rows: int) -> int:
        return bisect.bisect_left(self.boundaries, rows)

    def cost_s(self, rows: int) -> float:
        if rows <= 0:
            return 0.0
        r = bisect.bisect_left(self.boundaries, rows)
        return self.fixed_s[r] + self.per_row_s[r] * rows


@dataclass(frozen=True)
class StepCostModel:
    """Seconds per engine step and per request admitted (see the module docstring)."""

    tokens: RowCost  # T: linear layers and everything else that runs once per token row
    sampled: RowCost  # S: lm_head rows and the sampler
    per_paged_pair_fused_s: float  # p in steps the fused small-step decoder runs
    per_paged_pair_s: float  # p in larger steps
    per_dense_pair_s: float  # d
    host_fixed_s: float  # h0
    host_per_seq_s: float  # h1
    ingress_s: float = 0.0  # server-side work before a request is queued (chat template, tokenize)
    ingress_per_token_s: float = 0.0  # of which per prompt token
    scale: float = 1.0  # multiplies every step (prediction intervals: ± the fit's error)

    def __post_init__(self) -> None:
        values = (self.per_paged_pair_fused_s, self.per_paged_pair_s, self.per_dense_pair_s, self.host_fixed_s,
                  self.host_per_seq_s, self.ingress_s, self.ingress_per_token_s)
        if any(not v >= 0 for v in values):
            raise ValueError("step-cost coefficients must be ≥ 0")
        if not self.scale > 0:
            raise ValueError("scale must be positive")

    def forward_s(self, shape: StepShape) -> float:
        """The forward pass and sampling: what the engine records as a step's duration."""
        paged = self.per_paged_pair_fused_s if shape.fused else self.per_paged_pair_s
        seconds = (self.tokens.cost_s(shape.num_tokens) + self.sampled.cost_s(shape.num_sampled)
                   + paged * shape.paged_pairs + self.per_dense_pair_s * shape.dense_pairs)
        return seconds * self.scale

    def host_s(self, shape: StepShape) -> float:
        return (self.host_fixed_s + self.host_per_seq_s * shape.num_seqs) * self.scale

    def step_s(self, shape: StepShape) -> float:
        return self.forward_s(shape) + self.host_s(shape)

    def request_ingress_s(self, num_prompt_tokens: int) -> float:
        return self.ingress_s + self.ingress_per_token_s * num_prompt_tokens

    def scaled(self, factor: float) -> StepCostModel:
        return dataclasses.replace(self, scale=self.scale * factor)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepCostModel:
        values = dict(data)
        for key in ("tokens", "sampled"):
            row = values[key]
            values[key] = RowCost(tuple(int(b) for b in row["boundaries"]), tuple(map(float, row["fixed_s"])),
                                  tuple(map(float, row["per_row_s"])))
        return cls(**values)
