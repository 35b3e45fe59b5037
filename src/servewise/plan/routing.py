"""Which replica a request goes to when the plan has more than one (the fleet's rule).

Rule: send the request to the replica with the lowest predicted TTFT, predicted with
admission's formula on that replica: its queued prefill tokens ahead plus the part of
this request's prompt *its* prefix cache does not hold, at its fitted step cost, with its
running decodes. Ties are broken at random (seeded). The request is shed (429) only if
even that best replica's admission sheds it, i.e. it misses the class's TTFT target ×
slack everywhere.

This is the one function to switch to ``servewise.fleet.routing``'s pure scoring when
that lands; until then it restates the rule with the admission controller's own
``predict``.

Not modelled: stale routing stats (the fleet reads replica stats a few ms late; here the
router sees each replica's last published step), and the fleet's own ingress hops.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from servewise.engine.kv_cache_manager import KVCacheManager
from servewise.slo import AdmissionController, SLOClass


class RoutableReplica(Protocol):
    admission: AdmissionController
    kv: KVCacheManager
    published_running: int  # running sequences in the replica's last published stats


def predicted_ttft_s(replica: RoutableReplica, prompt: Sequence[int], slo_class: SLOClass) -> float:
    uncached = len(prompt) - replica.kv.num_cached_prefix_tokens(prompt)
    return replica.admission.predict(uncached, slo_class, num_running=replica.published_running).ttft_s


def choose_replica(replicas: Sequence[RoutableReplica], prompt: Sequence[int], slo_class: SLOClass,
                   rng: random.Random) -> int:
    """Index of the replica with the lowest predicted TTFT for this prompt; ties at random."""
    if len(replicas) == 1:
        return 0
    scores = [predicted_ttft_s(r, prompt, slo_class) for r in replicas]
    best = min(scores)
    tied = [i for i, s in enumerate(scores) if s <= best]
    return tied[0] if len(tied) == 1 else rng.choice(tied)
