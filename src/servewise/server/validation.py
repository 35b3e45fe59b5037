"""Parse, don't validate: OpenAI request bodies become frozen ``ValidGeneration`` objects.

Everything a request can get wrong is found here and raised as an
``InvalidRequestError`` naming the parameter; past this point nothing re-checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from servewise.config import ServerConfig
from servewise.errors import InvalidRequestError, ModelNotFoundError
from servewise.server.messages import conversation
from servewise.server.protocol import ChatCompletionRequest, CompletionRequest, _SamplingFields
from servewise.server.structured import parse_grammar
from servewise.server.tools import ToolPlan, parse_tools, template_syntax
from servewise.types import GrammarSpec, SamplingParams

Body = TypeVar("Body", bound=BaseModel)


class TokenizerLike(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            **extra: Any) -> str: ...


@dataclass(frozen=True)
class ValidGeneration:
    """A chat or completions request, checked and tokenized."""

    kind: Literal["chat", "completion"]
    model: str  # the served model name it asked for
    prompts: tuple[tuple[int, ...], ...]  # token ids, one entry per prompt (chat has exactly one)
    prompt_texts: tuple[str | None, ...]  # the prompt text where one was given (for echo)
    params: SamplingParams
    stream: bool
    include_usage: bool  # stream a final usage chunk
    want_logprobs: bool
    echo: bool  # completions: prepend the prompt to the text
    priority: str | None  # SLO class asked for in the body, if any
    user: str | None
    tools: ToolPlan | None = None  # chat: tools the model may call (parsed out of its output)
    grammar_param: str | None = None  # the parameter that constrained the output (params.grammar), for errors


def parse_body(model: type[Body], raw: bytes) -> Body:
    """JSON bytes -> a request model; malformed JSON and schema errors become clean 400s."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] == "json_invalid":
            raise InvalidRequestError("the request body is not valid JSON") from None
        # Drop pydantic's union-member tags ("str", "list[int]") from the location: users never wrote them.
        loc_parts = [str(p) for p in err["loc"] if isinstance(p, int) or not _is_type_tag(str(p))]
        loc = ".".join(loc_parts) or "body"
        message = _FRIENDLY.get(loc_parts[0] if loc_parts else "", err["msg"])
        if err["type"] == "missing":
            message = "field required"
        raise InvalidRequestError(f"{loc}: {message}", param=loc_parts[0] if loc_parts else None) from None


_FRIENDLY = {
    "prompt": "must be a string, a list of strings, a list of token ids or a list of token-id lists",
    "stop": "must be a string or a list of strings",
}


def _is_type_tag(part: str) -> bool:
    return part in ("str", "int", "float", "bool") or part.startswith(("list[", "dict[", "function-"))


def check_model(requested: str | None, served: str) -> str:
    if requested is not None and requested != served:
        raise ModelNotFoundError(f"the model {requested!r} does not exist; this server serves {served!r}",
                                 param="model", code="model_not_found")
    return served


def _sampling_params(req: _SamplingFields, max_tokens: int | None, logprobs: int | None,
                     grammar: GrammarSpec | None) -> SamplingParams:
    if req.top_k is not None and req.top_k < -1:
        raise InvalidRequestError("top_k must be -1 (disabled) or ≥ 1", param="top_k")
    bias: dict[int, float] = {}
    for key, value in (req.logit_bias or {}).items():
        try:
            bias[int(key)] = value
        except ValueError:
            raise InvalidRequestError(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    return SamplingParams(
        n=req.n, max_tokens=max_tokens, min_tokens=req.min_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=None if req.top_k is None or req.top_k <= 0 else req.top_k,
        min_p=req.min_p or 0.0, repetition_penalty=req.repetition_penalty or 1.0,
        presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=SamplingParams.bias_from_mapping(bias), seed=req.seed, logprobs=logprobs, stop=stop,
        stop_token_ids=tuple(req.stop_token_ids or ()), ignore_eos=req.ignore_eos,
        skip_special_tokens=req.skip_special_tokens, include_stop_str_in_output=req.include_stop_str_in_output,
        grammar=grammar)


def _check_stream_options(req: _SamplingFields) -> bool:
    if req.stream_options is not None and not req.stream:
        raise InvalidRequestError("stream_options is only allowed when stream is true", param="stream_options")
    return bool(req.stream_options and req.stream_options.include_usage)


def parse_chat(req: ChatCompletionRequest, tokenizer: TokenizerLike, served_model: str,
               limits: ServerConfig) -> ValidGeneration:
    model = check_model(req.model, served_model)
    if len(req.messages) > limits.max_messages:
        raise InvalidRequestError(f"at most {limits.max_messages} messages are allowed", param="messages")
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequestError("top_logprobs requires logprobs to be true", param="top_logprobs")
    include_usage = _check_stream_options(req)
    grammar, grammar_param = parse_grammar(req, limits.max_grammar_bytes)
    template = getattr(tokenizer, "chat_template", None)
    plan = parse_tools(req.tools, req.tool_choice, req.parallel_tool_calls, template, limits.max_grammar_bytes)
    if plan is not None:
        grammar, grammar_param = plan.grammar(grammar), "tools"
    params = _sampling_params(req, req.max_completion_tokens or req.max_tokens,
                              (req.top_logprobs or 0) if req.logprobs else None, grammar)
    messages, extra = conversation(req.messages, plan, template_syntax(template)[1])
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=req.add_generation_prompt, **extra)
    tokens = tuple(tokenizer.encode(text, add_special_tokens=False))
    return ValidGeneration("chat", model, (tokens,), (text,), params, req.stream, include_usage, req.logprobs,
                           False, req.priority, req.user, plan, grammar_param)


def parse_completion(req: CompletionRequest, tokenizer: TokenizerLike, served_model: str,
                     limits: ServerConfig) -> ValidGeneration:
    model = check_model(req.model, served_model)
    if req.suffix:
        raise InvalidRequestError("suffix is not supported", param="suffix")
    if req.echo and req.logprobs is not None:
        raise InvalidRequestError("echo together with logprobs is not supported (no prompt logprobs)",
                                  param="echo")
    include_usage = _check_stream_options(req)
    grammar, grammar_param = parse_grammar(req, limits.max_grammar_bytes)
    params = _sampling_params(req, 16 if req.max_tokens is None else req.max_tokens, req.logprobs, grammar)
    raw = req.prompt
    items: list[str | list[int]]
    if isinstance(raw, str):
        items = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        items = [raw]  # type: ignore[list-item]
    else:
        items = list(raw)  # type: ignore[arg-type]
    if not items:
        raise InvalidRequestError("prompt must not be empty", param="prompt")
    if len(items) > limits.max_prompts:
        raise InvalidRequestError(f"at most {limits.max_prompts} prompts per request", param="prompt")
    prompts = tuple(tuple(tokenizer.encode(p)) if isinstance(p, str) else tuple(p) for p in items)
    texts = tuple(p if isinstance(p, str) else None for p in items)
    return ValidGeneration("completion", model, prompts, texts, params, req.stream, include_usage,
                           req.logprobs is not None, req.echo, req.priority, req.user, None, grammar_param)
