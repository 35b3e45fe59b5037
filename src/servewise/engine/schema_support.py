"""Which backend can enforce a JSON schema, decided from the keywords it uses.

Measured (random walks through each backend's token masks, outputs checked with the `jsonschema`
package; benchmarks/structured.py --fidelity prints the table): xgrammar 0.2 enforces the common
keywords but silently ignores some; llguidance 1.x enforces some of those and refuses the rest.

| keyword | xgrammar | llguidance |
|---|---|---|
| pattern/format with minLength/maxLength | ignores the lengths | enforces |
| allOf | ignores it | enforces |
| uniqueItems, not, if/then/else, contains, dependentRequired, dependentSchemas | ignores | refuses |

So a schema with a keyword of the first two rows compiles with llguidance; a schema with one of the
last row gets a 400 naming it (no backend would keep the promise); everything else uses xgrammar.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

UNENFORCEABLE = ("uniqueItems", "not", "if", "then", "else", "contains", "dependentRequired", "dependentSchemas")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
               "unevaluatedProperties", "unevaluatedItems")


def schema_nodes(schema: Any) -> Iterator[dict[str, Any]]:
    """Every (sub)schema object of ``schema``: property names and enum values are not keywords."""
    if not isinstance(schema, dict):
        return
    yield schema
    for key in _SUBSCHEMA_MAPS:
        children = schema.get(key)
        if isinstance(children, dict):
            for child in children.values():
                yield from schema_nodes(child)
    for key in _SUBSCHEMA_LISTS:
        children = schema.get(key)
        if isinstance(children, list):
            for child in children:
                yield from schema_nodes(child)
    for key in _SUBSCHEMAS:
        yield from schema_nodes(schema.get(key))


def unenforceable_keywords(schema: Any) -> list[str]:
    return sorted({k for node in schema_nodes(schema) for k in UNENFORCEABLE if k in node})


def needs_llguidance(schema: Any) -> bool:
    """A keyword xgrammar would ignore and llguidance enforces."""
    for node in schema_nodes(schema):
        if "allOf" in node:
            return True
        if ("pattern" in node or "format" in node) and ("minLength" in node or "maxLength" in node):
            return True
    return False
