"""Sticky traffic splits and the shadow comparison: what users see of a rollout, and what they don't.

- ``on_candidate(session, rollout_id, share)``: a session goes to the candidate when the hash of
  (rollout, session) falls under ``share``. Sticky within a step, and monotone across steps: a
  session on the candidate at 5 % is still on it at 25 %.
- ``ShadowComparison``: mirrored requests (the baseline answers the user; the candidate's answer
  is discarded) compared pairwise. Greedy requests must produce the same tokens: exact-match rate
  and token agreement (longest common prefix / the longer length). Sampled ones can only be
  compared as distributions: output lengths. Both: latency and errors per version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from servewise.fleet.rollout_window import percentile


def on_candidate(session: str, rollout_id: str, share: float) -> bool:
    if share <= 0:
        return False
    if share >= 1:
        return True
    digest = hashlib.blake2b(f"{rollout_id}|{session}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


@dataclass(frozen=True)
class ShadowPair:
    greedy: bool  # temperature 0: the versions should agree token for token
    baseline_tokens: Sequence[int]
    candidate_tokens: Sequence[int]
    baseline_ttft_s: float | None
    candidate_ttft_s: float | None
    baseline_tpot_s: float | None
    candidate_tpot_s: float | None
    candidate_error: bool = False  # the mirrored request failed


def agreement(a: Sequence[int], b: Sequence[int]) -> float:
    """Longest common prefix / the longer length (1.0 for two empty outputs)."""
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    prefix = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        prefix += 1
    return prefix / longest


@dataclass
class ShadowComparison:
    pairs: list[ShadowPair] = field(default_factory=list)
    num_skipped: int = 0  # not mirrored: the candidate was busy (mirroring is shed first)
    max_pairs: int = 100_000

    def add(self, pair: ShadowPair) -> None:
        if len(self.pairs) < self.max_pairs:
            self.pairs.append(pair)

    def report(self) -> dict[str, Any]:
        done = [p for p in self.pairs if not p.candidate_error]
        greedy = [p for p in done if p.greedy]
        sampled = [p for p in done if not p.greedy]

        def latency(values: list[float | None]) -> dict[str, float | None]:
            present = [v for v in values if v is not None]
            return {"p50_s": percentile(present, 50), "p99_s": percentile(present, 99)}

        def lengths(attr: str) -> dict[str, float | None]:
            values = [float(len(getattr(p, attr))) for p in sampled]
            return {"p50": percentile(values, 50), "p90": percentile(values, 90),
                    "mean": sum(values) / len(values) if values else None}

        return {
            "num_mirrored": len(self.pairs), "num_skipped": self.num_skipped,
            "candidate_error_rate": (len(self.pairs) - len(done)) / len(self.pairs) if self.pairs else None,
            "greedy": {"num": len(greedy),
                       "exact_match_rate": (sum(1 for p in greedy if list(p.baseline_tokens) == list(p.candidate_tokens))
                                            / len(greedy)) if greedy else None,
                       "token_agreement": (sum(agreement(p.baseline_tokens, p.candidate_tokens) for p in greedy)
                                           / len(greedy)) if greedy else None},
            "sampled": {"num": len(sampled), "baseline_output_len": lengths("baseline_tokens"),
                        "candidate_output_len": lengths("candidate_tokens")},
            "ttft": {"baseline": latency([p.baseline_ttft_s for p in done]),
                     "candidate": latency([p.candidate_ttft_s for p in done])},
            "tpot": {"baseline": latency([p.baseline_tpot_s for p in done]),
                     "candidate": latency([p.candidate_tpot_s for p in done])},
        }
