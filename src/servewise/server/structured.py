"""Structured-output request fields -> one frozen ``GrammarSpec`` (or None), at the edge.

Accepted, at most one per request (each names the parameter in its 400s):
- ``response_format``: ``{"type": "text"}``, ``{"type": "json_object"}``,
  ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` (OpenAI);
- ``guided_json`` / ``guided_regex`` / ``guided_choice`` / ``guided_grammar`` (vLLM's extensions);
- ``structured_outputs``: ``{"json" | "regex" | "choice" | "grammar" | "json_object" | "structural_tag"}``.

Schemas are kept in their own key order (it is the order the output's properties follow) and
serialised compactly: that text is the compile cache's key. Whether a schema, pattern or grammar is
valid is decided by compiling it (engine/structured.py), which names the problem in its 400.
"""

from __future__ import annotations

import json
from typing import Any

from servewise.errors import InvalidRequestError
from servewise.server.protocol import ResponseFormat, StructuredOutputs, _SamplingFields
from servewise.types import GrammarKind, GrammarSpec

RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
MAX_CHOICES = 1024


def canonical_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parse_grammar(req: _SamplingFields, max_bytes: int) -> tuple[GrammarSpec | None, str | None]:
    """The request's output constraint and the parameter that asked for it (for error messages)."""
    given = [(name, value) for name, value in (
        ("response_format", req.response_format), ("guided_json", req.guided_json),
        ("guided_regex", req.guided_regex), ("guided_choice", req.guided_choice),
        ("guided_grammar", req.guided_grammar), ("structured_outputs", req.structured_outputs),
    ) if value is not None]
    if not given:
        return None, None
    if len(given) > 1:
        names = ", ".join(name for name, _ in given)
        raise InvalidRequestError(f"give at most one output constraint; this request has {names}", param=given[1][0])
    param, value = given[0]
    if isinstance(value, ResponseFormat):
        spec = _response_format(value)
    elif isinstance(value, StructuredOutputs):
        spec = _structured_outputs(value)
    else:
        spec = _guided(param, value)
    if spec is not None and len(spec.source.encode()) > max_bytes:
        raise InvalidRequestError(f"{param}: the {spec.kind.value.replace('_', ' ')} is {len(spec.source.encode())} "
                                  f"bytes; the limit is {max_bytes}", param=param, code="grammar_too_large")
    return spec, param if spec is not None else None


def _response_format(fmt: ResponseFormat) -> GrammarSpec | None:
    if fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return GrammarSpec(GrammarKind.JSON_OBJECT, "")
    if fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise InvalidRequestError("response_format.json_schema.schema is required for type json_schema",
                                      param="response_format")
        return schema_spec(fmt.json_schema.schema_, "response_format.json_schema.schema")
    raise InvalidRequestError(f"response_format.type must be one of {', '.join(RESPONSE_FORMAT_TYPES)}; "
                              f"got {fmt.type!r}", param="response_format")


def _structured_outputs(so: StructuredOutputs) -> GrammarSpec:
    fields = {"json": so.json_, "regex": so.regex, "choice": so.choice, "grammar": so.grammar,
              "json_object": so.json_object or None, "structural_tag": so.structural_tag}
    given = {k: v for k, v in fields.items() if v is not None}
    if len(given) != 1:
        raise InvalidRequestError(f"structured_outputs needs exactly one of {', '.join(fields)}; got "
                                  f"{', '.join(given) or 'none'}", param="structured_outputs")
    name, value = next(iter(given.items()))
    if name == "json_object":
        return GrammarSpec(GrammarKind.JSON_OBJECT, "")
    if name == "structural_tag":
        assert isinstance(value, str)
        return GrammarSpec(GrammarKind.STRUCTURAL_TAG, canonical_json(_json_text(value, "structured_outputs.structural_tag")))
    return _guided({"json": "guided_json", "regex": "guided_regex", "choice": "guided_choice",
                    "grammar": "guided_grammar"}[name], value, f"structured_outputs.{name}")


def _guided(param: str, value: Any, where: str | None = None) -> GrammarSpec:
    where = where or param
    if param == "guided_json":
        return schema_spec(_json_text(value, where) if isinstance(value, str) else value, where)
    if param == "guided_choice":
        if not value or len(value) > MAX_CHOICES or not all(value):
            raise InvalidRequestError(f"{where} must be a list of 1 to {MAX_CHOICES} non-empty strings", param=param)
        return GrammarSpec(GrammarKind.CHOICE, canonical_json(list(dict.fromkeys(value))))
    if not value.strip():
        raise InvalidRequestError(f"{where} must not be empty", param=param)
    return GrammarSpec(GrammarKind.REGEX if param == "guided_regex" else GrammarKind.EBNF, value)


def _json_text(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidRequestError(f"{where} is not valid JSON: {exc}", param=where.split(".")[0]) from None


def schema_spec(schema: Any, where: str) -> GrammarSpec:
    """A JSON schema (an object, or true/false) as a spec; the compile decides whether it is valid."""
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequestError(f"{where} must be a JSON schema object, got {type(schema).__name__}",
                                  param=where.split(".")[0])
    if schema is False:
        raise InvalidRequestError(f"{where} is `false`: no output can satisfy it", param=where.split(".")[0])
    return GrammarSpec(GrammarKind.JSON_SCHEMA, canonical_json(schema if schema is not True else {}))
