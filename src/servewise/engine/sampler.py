"""Batched token sampling with per-request parameters, and verification of speculative drafts.

Every operation is row-wise, and each random draw comes from the request's own
generator (one uniform number per token, inverse-CDF sampling), so a seeded
request samples the same tokens whatever else is in the batch.

Verifying a draft ``d_0..d_{k-1}`` (``Sampler.verify``) walks its positions in order: position
``j`` samples the target token ``t_j`` exactly as a plain step would (same processing, the
request's next uniform ``u_j``), accepts ``d_j`` iff ``t_j = d_j``, and stops at the first
mismatch, emitting ``t_j`` in its place (or the bonus ``t_k`` after a fully accepted draft).
For a deterministic draft (the proposal ``q`` is a point mass on ``d_j``) this *is* rejection
sampling: ``P(accept) = p(d_j) = min(1, p/q)``, and given a rejection, ``t_j`` is distributed
as ``p`` without ``d_j``, renormalised, i.e. the residual ``norm(max(0, p - q))``. Sharing one
uniform between the accept test and the residual draw means a sequence consumes one uniform
per emitted token, as without speculation: a seeded request gives the same tokens with
speculation on or off, whatever the batch (up to the numerics of the longer step). Greedy
rows are the ``u``-free case: ``t_j = argmax``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from servewise.engine.request import Request
from servewise.engine.structured import GrammarMasker
from servewise.types import SamplingParams, TokenLogprob


@dataclass
class SamplerOutput:
    token_ids: list[int]  # one per row
    logprobs: list[TokenLogprob | None]  # per row; None when the request asked for none


def apply_logits_processors(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
    """Penalties, logit_bias and min_tokens masking, row by row; returns a new tensor if any apply."""
    out = logits
    for i, r in enumerate(requests):
        p = r.params
        suppress_stop = r.num_output_tokens < p.min_tokens
        if not (p.logit_bias or suppress_stop or p.repetition_penalty != 1.0
                or p.presence_penalty or p.frequency_penalty):
            continue
        if out is logits:
            out = logits.clone()
        row = out[i]
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(r.token_ids)), dtype=torch.long)
            values = row[seen]
            row[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and r.num_output_tokens:
            ids, counts = torch.unique(torch.tensor(r.output_token_ids, dtype=torch.long), return_counts=True)
            row[ids] -= p.frequency_penalty * counts.float() + p.presence_penalty
        if p.logit_bias:
            ids = torch.tensor([t for t, _ in p.logit_bias], dtype=torch.long)
            row[ids] += torch.tensor([b for _, b in p.logit_bias], dtype=row.dtype)
        if suppress_stop:
            stop_ids = sorted(r.eos_token_ids | set(p.stop_token_ids))
            if stop_ids:
                row[torch.tensor(stop_ids, dtype=torch.long)] = float("-inf")
    return out


def filter_sorted_probs(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                        min_p: torch.Tensor) -> torch.Tensor:
    """probs: [B, V] sorted descending per row -> the same with filtered entries zeroed.

    top-k first, then top-p on the renormalised rest, then min-p; the top token always survives.
    """
    vocab = probs.shape[-1]
    ranks = torch.arange(vocab).unsqueeze(0)
    probs = probs.masked_fill(ranks >= top_k.unsqueeze(1), 0.0)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    mass_before = probs.cumsum(dim=-1) - probs
    probs = probs.masked_fill(mass_before >= top_p.unsqueeze(1), 0.0)
    return probs.masked_fill(probs < min_p.unsqueeze(1) * probs[:, :1], 0.0)


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    # probs: [B, V] unnormalised, ≥ 0; uniforms: [B] in [0, 1) -> index per row
    cdf = probs.cumsum(dim=-1)
    targets = (uniforms * cdf[:, -1]).unsqueeze(1)
    idx = torch.searchsorted(cdf, targets, right=True).squeeze(1)
    return idx.clamp_(max=probs.shape[-1] - 1)


class Sampler:
    def __init__(self) -> None:
        self._masker: GrammarMasker | None = None  # made when the first constrained row shows up

    def sample(self, logits: torch.Tensor, requests: Sequence[Request]) -> SamplerOutput:
        # logits: [B, V] fp32 raw model output, row i belongs to requests[i]
        processed = apply_logits_processors(logits, requests)
        if any(r.grammar is not None for r in requests):
            processed = self._mask_grammars(logits, processed, requests)
        tokens = torch.empty(len(requests), dtype=torch.long)
        greedy = [i for i, r in enumerate(requests) if r.params.greedy]
        if greedy:
            rows = torch.tensor(greedy, dtype=torch.long)
            tokens[rows] = processed.index_select(0, rows).argmax(dim=-1)
        random_rows = [i for i, r in enumerate(requests) if not r.params.greedy]
        if random_rows:
            self._sample_random(processed, requests, random_rows, tokens)
        token_list = tokens.tolist()
        return SamplerOutput(token_list, self._logprobs(logits, requests, token_list))

    def _mask_grammars(self, logits: torch.Tensor, processed: torch.Tensor, requests: Sequence[Request]
                       ) -> torch.Tensor:
        """Constrained rows keep only the tokens their grammar allows (logprobs still see the raw logits)."""
        if processed is logits and any(r.params.logprobs is not None for r in requests):
            processed = logits.clone()
        if self._masker is None or self._masker.vocab_size != logits.shape[-1]:
            self._masker = GrammarMasker(logits.shape[-1])
        return self._masker.apply(processed, requests)

    @staticmethod
    def _sample_random(processed: torch.Tensor, requests: Sequence[Request], row_ids: list[int],
                       tokens: torch.Tensor) -> None:
        rows = torch.tensor(row_ids, dtype=torch.long)
        uniforms = torch.cat([torch.rand(1, generator=requests[i].generator) for i in row_ids])
        target = TargetDistribution(processed.index_select(0, rows), [requests[i].params for i in row_ids])
        tokens[rows] = target.pick(uniforms)

    def verify(self, logits: torch.Tensor, request: Request, draft: Sequence[int]
               ) -> list[tuple[int, TokenLogprob | None]]:
        """The tokens a verify step emits for ``request`` (module docstring): the longest accepted prefix
        of ``draft``, then one sampled token. logits: [len(draft) + 1, V], row j = the position after
        draft[:j]. Only for rows whose processing does not depend on the draft (no grammar, penalties
        or pending min_tokens: ``speculative.can_speculate``)."""
        rows = [request] * logits.shape[0]
        processed = apply_logits_processors(logits, rows)
        if request.params.greedy:
            targets = processed.argmax(dim=-1).tolist()
            tokens = accept_longest_prefix(draft, targets.__getitem__)
        else:
            target = TargetDistribution(processed, [request.params] * len(rows))
            tokens = accept_longest_prefix(
                draft, lambda j: target.pick_row(j, torch.rand(1, generator=request.generator)))
        return list(zip(tokens, self._logprobs(logits[:len(tokens)], rows[:len(tokens)], tokens), strict=True))

    @staticmethod
    def _logprobs(logits: torch.Tensor, requests: Sequence[Request], tokens: list[int]
                  ) -> list[TokenLogprob | None]:
        out: list[TokenLogprob | None] = [None] * len(requests)
        wanted = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
        if not wanted:
            return out
        logprobs = torch.log_softmax(logits.index_select(0, torch.tensor(wanted)), dim=-1)
        for row, i in enumerate(wanted):
            k = requests[i].params.logprobs or 0
            top: tuple[tuple[int, float], ...] = ()
            if k:
                values, ids = logprobs[row].topk(k)
                top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
            out[i] = TokenLogprob(tokens[i], float(logprobs[row, tokens[i]]), top)
        return out


class TargetDistribution:
    """Rows of sampling distributions (temperature, then top-k / top-p / min-p) and inverse-CDF picks."""

    def __init__(self, logits: torch.Tensor, params: Sequence[SamplingParams]) -> None:
        # logits: [R, V] processed; params[i] belongs to row i
        temps = torch.tensor([p.temperature for p in params]).unsqueeze(1)
        probs = torch.softmax(logits / temps, dim=-1)
        self._sorted_idx: torch.Tensor | None = None  # [R, V] when filtered: probs are then in sorted order
        if any(p.top_k is not None or p.top_p < 1.0 or p.min_p > 0.0 for p in params):
            vocab = probs.shape[-1]
            sorted_probs, self._sorted_idx = probs.sort(dim=-1, descending=True, stable=True)
            probs = filter_sorted_probs(
                sorted_probs,
                torch.tensor([p.top_k or vocab for p in params]),
                torch.tensor([p.top_p for p in params]),
                torch.tensor([p.min_p for p in params]))
        self._probs = probs

    def pick(self, uniforms: torch.Tensor) -> torch.Tensor:
        """uniforms: [R] in [0, 1) -> [R] token ids."""
        picked = _inverse_cdf(self._probs, uniforms)
        if self._sorted_idx is None:
            return picked
        return self._sorted_idx.gather(1, picked.unsqueeze(1)).squeeze(1)

    def pick_row(self, row: int, uniform: torch.Tensor) -> int:
        """The token row ``row`` gives for ``uniform`` ([1]), as ``pick`` would."""
        picked = int(_inverse_cdf(self._probs[row:row + 1], uniform)[0])
        return picked if self._sorted_idx is None else int(self._sorted_idx[row, picked])


def accept_longest_prefix(draft: Sequence[int], target_at: Callable[[int], int]) -> list[int]:
    """``draft[:m] + [target_at(m)]`` for the first m with ``target_at(m) != draft[m]`` (m = len(draft) if
    none). ``target_at(j)`` is called for j = 0..m only, in order, so each consumes its uniform lazily."""
    tokens = []
    for j in range(len(draft) + 1):
        token = target_at(j)
        tokens.append(token)
        if j == len(draft) or token != draft[j]:
            break
    return tokens
