"""OpenAI request bodies as pydantic models: the shape only (types, required fields).

Bounds and cross-field rules live in ``validation.py``, which turns these into
frozen ``Valid*`` objects; unknown fields are ignored, as OpenAI does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_CONFIG = ConfigDict(extra="ignore", strict=True)


class _Body(BaseModel):
    model_config = _CONFIG


class TextPart(_Body):
    type: str
    text: str | None = None


class FunctionCall(_Body):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Body):
    id: str
    type: str = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant messages
    tool_call_id: str | None = None  # tool messages: the call they answer


class JsonSchemaFormat(_Body):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: str  # text | json_object | json_schema; anything else is refused in validation
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Body):
    """vLLM's newer `structured_outputs` object: exactly one of these."""

    json_: dict[str, Any] | str | bool | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None


class FunctionDefinition(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    type: str
    function: FunctionDefinition


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: str
    function: NamedFunction


class StreamOptions(_Body):
    include_usage: bool = False


class _SamplingFields(_Body):
    """Fields shared by chat and completions (OpenAI's plus vLLM's extensions)."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # extension; -1 or 0 = disabled (vLLM convention)
    min_p: float | None = None  # extension
    n: int = 1
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None  # extension
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None  # extension
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False  # extension
    min_tokens: int = 0  # extension
    skip_special_tokens: bool = True  # extension
    include_stop_str_in_output: bool = False  # extension
    priority: str | None = None  # SLO class name, honoured only when the server allows it
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | bool | None = None  # extension (vLLM)
    guided_regex: str | None = None  # extension
    guided_choice: list[str] | None = None  # extension
    guided_grammar: str | None = None  # extension: EBNF (GBNF), start rule `root`
    structured_outputs: StructuredOutputs | None = None  # extension (vLLM ≥ 0.10)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True  # extension
    tools: list[Tool] | None = None
    tool_choice: str | NamedToolChoice | None = None  # none | auto | required | a named function
    parallel_tool_calls: bool | None = None


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]
