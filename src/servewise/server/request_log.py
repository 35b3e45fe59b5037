"""One structured JSON log line per finished request (logger ``servewise.requests``)."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from servewise.server.generation import Generation

logger = logging.getLogger("servewise.requests")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def log_finished(gen: Generation, endpoint: str, status: str, extra: dict[str, Any] | None = None) -> None:
    if not logger.isEnabledFor(logging.INFO):
        return
    usage = gen.usage()
    timings = [r.timings for r in gen.results if r.timings is not None]
    t = timings[0] if timings else None
    now = time.monotonic()
    first_token = min((x.first_token_s for x in timings if x.first_token_s is not None), default=None)
    finished = max((x.finished_s or now for x in timings), default=now)
    num_out = usage.completion_tokens
    record: dict[str, Any] = {
        "event": "request_finished", "request_id": gen.request_id, "endpoint": endpoint,
        "model": gen.valid.model, "status": status, "stream": gen.valid.stream,
        "finish_reasons": gen.engine_finish_reasons(), "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": num_out, "cached_tokens": usage.cached_tokens,
        "queue_s": _rounded(t.first_scheduled_s - gen.arrival_s) if t and t.first_scheduled_s else None,
        "ttft_s": _rounded(first_token - gen.arrival_s) if first_token else None,
        "e2e_s": _rounded(finished - gen.arrival_s),
        "tpot_s": _rounded((finished - first_token) / (num_out - 1)) if first_token and num_out > 1 else None,
        "prefill_compute_s": _rounded(sum(x.prefill_compute_s for x in timings)),
        "decode_compute_s": _rounded(sum(x.decode_compute_s for x in timings)),
        "preemptions": sum(x.num_preemptions for x in timings),
        "user": gen.valid.user,
    }
    if extra:
        record.update(extra)
    logger.info(json.dumps(record, separators=(",", ":")))
