"""The canary gate: is the candidate worse than the baseline on the same stretch of traffic?

Per version, over the step so far: eligible requests n (served + failed + shed), met (served
within every target of their SLO class), errors (5xx, engine failures, lost replicas), shed
(429), and p99 TTFT / TPOT of the served ones.

- Nothing is judged worse before both versions have ``min_samples`` requests in the step.
- Proportions, one-sided two-sample z-test at ``confidence`` against a tolerance d:
  attainment is worse when ``p_base - p_cand > d``; errors and sheds when ``p_cand - p_base > d``.
  With Agresti-Caffo's adjustment (one success and one failure added to each side, so a small
  all-or-nothing sample is never "certain"): ``p = (x + 1) / (n + 2)``,
  ``z = (p_c - p_b - d) / sqrt(p_b (1 - p_b) / (n_b + 2) + p_c (1 - p_c) / (n_c + 2))``; worse when z
  exceeds the normal quantile of ``confidence``.
- Tails: the threshold is ``max(p99_ratio_tolerance × b99, b99 + p99_min_delta_s)`` over the
  baseline's TTFT (TPOT) p99 ``b99`` (milliseconds of noise on a fast model are not a
  regression). With the same distribution, a candidate request lands above it with chance ≤ 1 %;
  worse when k of the candidate's n served requests did and ``P(Bin(n, 0.01) ≥ k) < 1 - confidence``.
  (Comparing the two p99s instead rolled back an identical candidate: over 20 requests a p99 is
  the slowest one, such as a new replica's first request.) Not at the 100 % step: the candidate then carries the whole load, and its p99s
  against the baseline's previous step (a share of that load) would measure the load, not the
  version; attainment, errors and sheds are relative to the SLO and stay comparable.

Decision: any "worse" → ROLLBACK (at once, whatever the step's age); else PROMOTE once the step
has lasted ``step_min_duration_s`` and the candidate served ``step_min_requests``; else EXTEND.

Not modelled: traffic mix differences between the versions (sticky sessions make them small but
nonzero), sequential-testing error inflation from looking every window (the tolerances and
the minimum samples absorb it in practice), and the baseline p99's own sampling error.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from servewise.fleet.rollout_spec import AnalysisConfig


class GateDecision(str, enum.Enum):
    PROMOTE = "promote"
    EXTEND = "extend"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class VersionWindow:
    """One version's traffic over the analysed span."""

    num_requests: int = 0  # eligible: served + failed + shed
    num_met: int = 0  # served within every target of their SLO class
    num_errors: int = 0  # failed on the server's side
    num_shed: int = 0  # refused by admission (429)
    ttft_p99_s: float | None = None  # of served requests
    tpot_p99_s: float | None = None
    ttft_samples_s: tuple[float, ...] = ()  # each served request's (for the tail test)
    tpot_samples_s: tuple[float, ...] = ()

    @property
    def attainment(self) -> float | None:
        return self.num_met / self.num_requests if self.num_requests else None

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.num_requests, "met": self.num_met, "errors": self.num_errors, "shed": self.num_shed,
                "attainment": self.attainment, "ttft_p99_s": self.ttft_p99_s, "tpot_p99_s": self.tpot_p99_s}


@dataclass(frozen=True)
class GateResult:
    decision: GateDecision
    reasons: tuple[str, ...]  # why (the worse findings, or what is missing, or "no worse")
    figures: dict[str, Any] = field(default_factory=dict)  # both windows and the test statistics


def worse_by(base_hits: int, base_n: int, cand_hits: int, cand_n: int, tolerance: float,
             confidence: float) -> tuple[bool, float]:
    """One-sided: is the candidate's rate higher than the baseline's by more than ``tolerance``?
    Returns (worse, z)."""
    if base_n == 0 or cand_n == 0:
        return False, 0.0
    p_b, p_c = (base_hits + 1) / (base_n + 2), (cand_hits + 1) / (cand_n + 2)
    z = (p_c - p_b - tolerance) / math.sqrt(p_b * (1 - p_b) / (base_n + 2) + p_c * (1 - p_c) / (cand_n + 2))
    return z > NormalDist().inv_cdf(confidence), z


TAIL_SHARE = 0.01  # a request lands above the baseline's p99 this often when nothing changed


def binomial_tail_below(n: int, k: int, p: float, alpha: float) -> bool:
    """Is ``P(X ≥ k) < alpha`` for ``X ~ Bin(n, p)``? Sums the pmf below k in log space, stopping
    as soon as the answer is known (a few terms past n·p), so a large n costs little."""
    if k <= 0:
        return False
    log_p, log_q = math.log(p), math.log1p(-p)
    below = 0.0
    for i in range(k):
        below += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p
                          + (n - i) * log_q)
        if 1.0 - below < alpha:
            return True
    return 1.0 - below < alpha


def evaluate(base: VersionWindow, cand: VersionWindow, cfg: AnalysisConfig, *, step_age_s: float,
             step_min_duration_s: float, step_min_requests: int, compare_p99: bool = True) -> GateResult:
    findings: list[str] = []
    stats: dict[str, float] = {}
    enough = base.num_requests >= cfg.min_samples and cand.num_requests >= cfg.min_samples
    # attainment: "missed" rates, so that higher is worse like the others
    checks = () if not enough else (("missed SLO", base.num_requests - base.num_met, cand.num_requests - cand.num_met,
               cfg.attainment_tolerance),
              ("errors", base.num_errors, cand.num_errors, cfg.error_tolerance),
              ("shed", base.num_shed, cand.num_shed, cfg.shed_tolerance))
    for name, b_hits, c_hits, tol in checks:
        worse, z = worse_by(b_hits, base.num_requests, c_hits, cand.num_requests, tol, cfg.confidence)
        stats[f"z_{name.replace(' ', '_')}"] = round(z, 3)
        if worse:
            findings.append(f"{name}: {c_hits}/{cand.num_requests} on the candidate vs {b_hits}/{base.num_requests} "
                            f"on the baseline (z = {z:.2f} beyond +{tol:g})")
    if enough and compare_p99:
        for name, b99, c99, samples in (("TTFT", base.ttft_p99_s, cand.ttft_p99_s, cand.ttft_samples_s),
                                        ("TPOT", base.tpot_p99_s, cand.tpot_p99_s, cand.tpot_samples_s)):
            if b99 is None or not samples:
                continue
            threshold = max(cfg.p99_ratio_tolerance * b99, b99 + cfg.p99_min_delta_s)
            above = sum(1 for x in samples if x > threshold)
            stats[f"{name.lower()}_above_threshold"] = above
            if binomial_tail_below(len(samples), above, TAIL_SHARE, 1 - cfg.confidence):
                findings.append(f"{name}: {above} of {len(samples)} candidate requests over {threshold * 1e3:.0f} ms "
                                f"(the baseline's p99 {b99 * 1e3:.0f} ms × {cfg.p99_ratio_tolerance:g}, at least "
                                f"+{cfg.p99_min_delta_s * 1e3:g} ms), candidate p99 "
                                f"{(c99 or 0.0) * 1e3:.0f} ms")
    figures = {"baseline": base.as_dict(), "candidate": cand.as_dict(), "step_age_s": round(step_age_s, 3), **stats}
    if findings:
        return GateResult(GateDecision.ROLLBACK, tuple(findings), figures)
    missing = [] if enough else [f"{min(base.num_requests, cand.num_requests)} of {cfg.min_samples} requests "
                                 "on the version with fewer"]
    if step_age_s < step_min_duration_s:
        missing.append(f"the step is {step_age_s:.0f} s old of {step_min_duration_s:g} s")
    if cand.num_requests < step_min_requests:
        missing.append(f"the candidate saw {cand.num_requests} of {step_min_requests} requests")
    if missing:
        return GateResult(GateDecision.EXTEND, tuple(missing), figures)
    return GateResult(GateDecision.PROMOTE, ("no worse than the baseline on attainment, errors, sheds and p99s",),
                      figures)
