"""Does a backend keep a schema's promise? Random walks through its token masks (no model), outputs
checked with jsonschema; `python benchmarks/structured.py --fidelity` prints the table that
src/servewise/engine/schema_support.py is based on."""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import llguidance as llg
import llguidance.torch as llg_torch
import xgrammar as xgr

from servewise.engine.llguidance_backend import ll_tokenizer
from servewise.engine.structured import tokenizer_info, unpack_bitmask

_I = {"type": "integer", "minimum": 0, "maximum": 9}
FEATURES: dict[str, dict[str, Any]] = {
    "pattern + maxLength": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 3},
    "pattern + minLength": {"type": "string", "pattern": "^[a-z]+$", "minLength": 4, "maxLength": 6},
    "format date": {"type": "string", "format": "date"},
    "allOf": {"allOf": [{"type": "object", "properties": {"a": _I}, "required": ["a"]},
                        {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]}]},
    "uniqueItems": {"type": "array", "items": {"enum": [1, 2, 3]}, "uniqueItems": True, "minItems": 2, "maxItems": 3},
    "not": {"type": "integer", "minimum": 0, "maximum": 5, "not": {"const": 3}},
    "if/then/else": {"type": "object", "properties": {"k": {"enum": ["x", "y"]}, "v": _I}, "required": ["k", "v"],
                     "additionalProperties": False, "if": {"properties": {"k": {"const": "x"}}},
                     "then": {"properties": {"v": {"maximum": 3}}}},
    "contains": {"type": "array", "items": _I, "contains": {"const": 5}, "maxItems": 3},
    "dependentRequired": {"type": "object", "properties": {"a": _I, "b": _I}, "dependentRequired": {"a": ["b"]},
                          "additionalProperties": False},
    "oneOf": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 5}, {"type": "string", "maxLength": 3}]},
    "multipleOf": {"type": "integer", "multipleOf": 7, "minimum": 0, "maximum": 100},
    "recursive $ref": {"$defs": {"n": {"type": "object", "properties": {"v": _I, "next": {
        "anyOf": [{"$ref": "#/$defs/n"}, {"type": "null"}]}}, "required": ["v", "next"],
        "additionalProperties": False}}, "$ref": "#/$defs/n"},
}


def _walk(matcher: Any, fill: Any, accept: Any, stopped: Any, vocab: int, eos: list[int], decode: Any,
          rng: random.Random, max_tokens: int = 60) -> str | None:
    mask, out = xgr.allocate_token_bitmask(1, vocab), []
    for _ in range(max_tokens):
        fill(matcher, mask)
        allowed = unpack_bitmask(mask, vocab)[0].nonzero().flatten().tolist()
        stops = [t for t in allowed if t in eos]
        token = stops[0] if stops and rng.random() < 0.5 else rng.choice(allowed)
        if not accept(matcher, token):
            return None
        if token in eos:
            return str(decode(out))
        out.append(token)
        if stopped(matcher):
            return str(decode(out))
    return None  # cut: the walk did not end within max_tokens


def fidelity_table(engine: Any, walks: int = 40) -> None:
    tok, vocab, eos = engine.tokenizer, engine.vocab_size, sorted(engine.eos_token_ids)
    xc = xgr.GrammarCompiler(tokenizer_info(tok, vocab, eos), max_threads=2, cache_enabled=False)
    lt = ll_tokenizer(tok, vocab, eos)
    print(f"\n## Backend fidelity: {walks} random walks per keyword; valid / invalid / cut at 60 tokens\n")
    print("| keyword | xgrammar | llguidance |\n|---|---|---|")
    for name, schema in FEATURES.items():
        cells = []
        for backend in ("xgrammar", "llguidance"):
            rng, counts = random.Random(0), [0, 0, 0]
            try:
                if backend == "xgrammar":
                    compiled = xc.compile_json_schema(json.dumps(schema), any_whitespace=False)

                    def new(compiled: Any = compiled) -> Any:
                        return xgr.GrammarMatcher(compiled, override_stop_tokens=eos)
                    fill, accept, stopped = ((lambda m, b: m.fill_next_token_bitmask(b)),
                                             (lambda m, t: m.accept_token(t)), (lambda m: m.is_terminated()))
                else:
                    grammar = llg.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})

                    def new(grammar: str = grammar) -> Any:
                        m = llg.LLMatcher(lt, grammar, log_level=0)
                        if m.is_error():
                            raise ValueError(m.get_error())
                        return m
                    fill, accept, stopped = ((lambda m, b: llg_torch.fill_next_token_bitmask(m, b)),
                                             (lambda m, t: m.consume_token(t)), (lambda m: m.is_stopped()))
                for _ in range(walks):
                    text = _walk(new(), fill, accept, stopped, vocab, eos, tok.decode, rng)
                    if text is None:
                        counts[2] += 1
                        continue
                    try:
                        jsonschema.validate(json.loads(text), schema)
                        counts[0] += 1
                    except (ValueError, jsonschema.ValidationError):
                        counts[1] += 1
                cells.append("/".join(map(str, counts)))
            except Exception as exc:  # a backend that refuses the keyword says so here
                cells.append("refused: " + str(exc).strip().splitlines()[0][-50:])
        print(f"| {name} | {cells[0]} | {cells[1]} |")
