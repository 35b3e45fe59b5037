"""Per-request output state: detokenization, stop conditions, and the RequestOutputs streamed back."""

from __future__ import annotations

from dataclasses import dataclass, field

from servewise.engine.detokenizer import StopAwareDetokenizer, TokenizerLike
from servewise.engine.request import Request
from servewise.types import CompletionOutput, FinishReason, RequestOutput, TokenLogprob


@dataclass
class RequestGroup:
    """A client request: its n sequences, their detokenizers and what was already sent."""

    group_id: str
    children: list[Request]
    detokenizers: list[StopAwareDetokenizer]
    prompt_sent: bool = False
    # per child: token times of tokens not yet reported
    pending_times: list[list[float]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(r.is_finished for r in self.children)


def check_stop(request: Request, detokenizer: StopAwareDetokenizer, token_id: int) -> FinishReason | None:
    """Decide whether ``token_id`` (already appended) ends the sequence; decodes it unless it is a stop token."""
    reason = _stop_reason(request, detokenizer, token_id)
    if reason is not None and not isinstance(request.stop_reason, str):
        detokenizer.flush()
    return reason


def _stop_reason(request: Request, detokenizer: StopAwareDetokenizer, token_id: int) -> FinishReason | None:
    p = request.params
    may_stop = request.num_output_tokens > p.min_tokens - 1
    if may_stop and not p.ignore_eos and token_id in request.eos_token_ids:
        return FinishReason.STOP
    if may_stop and token_id in p.stop_token_ids:
        request.stop_reason = token_id
        return FinishReason.STOP
    stop_str = detokenizer.add_token(token_id)
    if stop_str is not None and may_stop:
        request.stop_reason = stop_str
        return FinishReason.STOP
    if request.grammar is not None and request.grammar.must_stop():
        return FinishReason.STOP  # the grammar is complete: only eos could follow
    if p.max_tokens is not None and request.num_output_tokens >= p.max_tokens:
        return FinishReason.LENGTH
    if request.num_tokens >= request.max_total_tokens:
        return FinishReason.LENGTH
    return None


def build_output(group: RequestGroup, tokenizer: TokenizerLike) -> RequestOutput | None:
    """The delta since the last call, or None if nothing changed for the client."""
    outputs = []
    for i, (r, detok) in enumerate(zip(group.children, group.detokenizers, strict=True)):
        new_ids = r.output_token_ids[r.num_emitted_tokens:]
        finished_now = r.is_finished and not r.final_output_sent
        if not new_ids and not finished_now:
            continue
        text = detok.take_delta(r.is_finished)
        logprobs: list[TokenLogprob] | None = None
        if r.params.logprobs is not None:
            logprobs, r.new_logprobs = r.new_logprobs, []
        times, group.pending_times[i] = group.pending_times[i], []
        r.num_emitted_tokens = r.num_output_tokens
        r.final_output_sent = r.is_finished
        outputs.append(CompletionOutput(
            index=r.index, text=text, token_ids=new_ids, logprobs=logprobs,
            num_output_tokens=r.num_output_tokens,
            finish_reason=r.finish_reason if r.is_finished else None,
            stop_reason=r.stop_reason, token_times_s=times))
    if not outputs:
        return None
    leader = group.children[0]
    first = not group.prompt_sent
    group.prompt_sent = True
    error = next((r.error for r in group.children if r.error), None)
    return RequestOutput(
        request_id=group.group_id, outputs=outputs, finished=group.finished,
        num_prompt_tokens=leader.num_prompt_tokens, num_cached_tokens=leader.num_cached_tokens,
        timings=leader.timings, prompt_token_ids=list(leader.prompt_token_ids) if first else None,
        error=error)
