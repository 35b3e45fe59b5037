"""JSON schemas for structured-output tests and benchmarks/structured.py: (prompt, schema) pairs.

They cover nested objects, arrays with min/max items, enums, string lengths and patterns, numbers
with bounds, anyOf, $ref/$defs, optional fields and additionalProperties: false. Every free-text
string has a maxLength, every number bounds and every array maxItems: a 135M model otherwise loops
("1111…") until max_tokens cuts the JSON, which would test the model's stamina, not the constraint.
With these bounds no output can exceed MAX_OUTPUT_TOKENS (each character at most one token).
"""

from __future__ import annotations

from typing import Any

MAX_OUTPUT_TOKENS = 320  # above the longest output any schema below allows


def _s(n: int = 24, **kw: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": n, **kw}


def _i(lo: int = 0, hi: int = 1000) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _n(lo: float = 0, hi: float = 100) -> dict[str, Any]:
    return {"type": "number", "minimum": lo, "maximum": hi}


def _obj(props: dict[str, Any], required: list[str] | None = None, closed: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props,
                           "required": list(props) if required is None else required}
    if closed:
        out["additionalProperties"] = False
    return out


def _arr(items: dict[str, Any], lo: int = 0, hi: int = 3) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": lo, "maxItems": hi}


_ADDRESS = _obj({"street": _s(30), "city": _s(20), "zip": _s(pattern="^[0-9]{5}$")})
_PERSON_DEFS = {"$defs": {"address": _ADDRESS}}

SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("a person with a name and an age", _obj({"name": _s(), "age": _i(0, 120)})),
    ("a city with its country and population", _obj({"city": _s(), "country": _s(), "population": _i(0, 40_000_000)})),
    ("a book with a title, an author and a year", _obj({"title": _s(40), "author": _s(), "year": _i(1400, 2030)})),
    ("a product with a name, a price and whether it is in stock",
     _obj({"name": _s(), "price": _n(0, 10_000), "in_stock": {"type": "boolean"}})),
    ("a color in RGB", _obj({"r": _i(0, 255), "g": _i(0, 255), "b": _i(0, 255)})),
    ("a point in 2D", _obj({"x": _n(-100, 100), "y": _n(-100, 100)})),
    ("the weather today", _obj({"condition": {"enum": ["sunny", "cloudy", "rainy", "snowy"]},
                                "temperature_c": _i(-50, 60)})),
    ("a traffic light state", _obj({"light": {"type": "string", "enum": ["red", "yellow", "green"]}})),
    ("a yes or no answer to: is the sky blue?", _obj({"answer": {"enum": ["yes", "no"]}, "confidence": _n(0, 1)})),
    ("a movie rating", _obj({"movie": _s(30), "stars": _i(1, 5)})),
    ("a US phone number", _obj({"phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{3}-[0-9]{4}$"}})),
    ("a date", _obj({"date": {"type": "string", "pattern": "^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])$"}})),
    ("a hex color code", _obj({"hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}})),
    ("a username and a password hint", _obj({"username": _s(12, minLength=3, pattern="^[a-z][a-z0-9_]*$"),
                                            "hint": _s(30)})),
    ("a short tweet", _obj({"text": _s(60, minLength=5)})),
    ("three tags for a blog post about cooking", _obj({"tags": _arr(_s(15), 3, 3)})),
    ("a shopping list", _obj({"items": _arr(_s(20), 1, 4)})),
    ("the first few prime numbers", _obj({"primes": _arr(_i(2, 100), 2, 5)})),
    ("a list of at most two favourite fruits", _obj({"fruits": _arr({"enum": ["apple", "banana", "cherry", "kiwi"]},
                                                                     0, 2)})),
    ("a matrix of small integers", _obj({"rows": _arr(_arr(_i(0, 9), 2, 2), 2, 2)})),
    ("a person with an address", _obj({"name": _s(), "address": _obj({"city": _s(), "country": _s()})})),
    ("a company with its CEO", _obj({"company": _s(), "ceo": _obj({"name": _s(), "age": _i(18, 100)})})),
    ("a team with members", _obj({"team": _s(), "members": _arr(_obj({"name": _s(16), "role": _s(16)}), 1, 3)})),
    ("an order with line items", _obj({"order_id": _i(1, 99999),
                                       "lines": _arr(_obj({"sku": _s(8), "qty": _i(1, 20)}), 1, 3)})),
    ("a deeply nested configuration", _obj({"server": _obj({"http": _obj({"port": _i(1, 65535),
                                                                          "tls": {"type": "boolean"}})})})),
    ("a person whose nickname is optional", _obj({"name": _s(), "nickname": _s(12)}, required=["name"])),
    ("a recipe with optional notes", _obj({"dish": _s(), "minutes": _i(1, 300), "notes": _s(40)},
                                          required=["dish", "minutes"])),
    ("a user profile where every field is optional", _obj({"bio": _s(40), "age": _i(0, 120)}, required=[])),
    ("an event with an optional location", _obj({"title": _s(), "location": _obj({"city": _s()})},
                                                required=["title"])),
    ("a contact: either an email or a phone", _obj({"contact": {"anyOf": [
        _s(30, pattern="^[a-z]+@[a-z]+\\.com$"), {"type": "string", "pattern": "^[0-9]{10}$"}]}})),
    ("an id that is a number or a short code", _obj({"id": {"anyOf": [_i(0, 9999), _s(6)]}})),
    ("a shape: a circle or a square", _obj({"shape": {"anyOf": [
        _obj({"kind": {"const": "circle"}, "radius": _n(0, 10)}),
        _obj({"kind": {"const": "square"}, "side": _n(0, 10)})]}})),
    ("a value that may be null", _obj({"value": {"anyOf": [_i(0, 100), {"type": "null"}]}})),
    ("a person with an address, using $defs",
     {**_PERSON_DEFS, **_obj({"name": _s(), "home": {"$ref": "#/$defs/address"}})}),
    ("a person with a home and a work address",
     {**_PERSON_DEFS, **_obj({"home": {"$ref": "#/$defs/address"}, "work": {"$ref": "#/$defs/address"}})}),
    ("a list of addresses", {**_PERSON_DEFS, **_obj({"addresses": _arr({"$ref": "#/$defs/address"}, 1, 2)})}),
    ("a money amount", {"$defs": {"money": _obj({"amount": _n(0, 1000), "currency": {"enum": ["EUR", "USD"]}})},
                        **_obj({"price": {"$ref": "#/$defs/money"}})}),
    ("a student with grades", _obj({"student": _s(), "grades": _arr(_i(0, 20), 1, 4)})),
    ("a temperature reading", _obj({"celsius": _n(-90, 60), "sensor": _s(10)})),
    ("a percentage", _obj({"percent": _n(0, 100)})),
    ("a probability", _obj({"p": {"type": "number", "minimum": 0, "maximum": 1}})),
    ("an exclusive range value", _obj({"v": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}})),
    ("a negative number", _obj({"n": _i(-1000, -1)})),
    ("a boolean flag set", _obj({"debug": {"type": "boolean"}, "verbose": {"type": "boolean"}})),
    ("a log level", _obj({"level": {"enum": ["debug", "info", "warning", "error"]}, "message": _s(40)})),
    ("an HTTP response", _obj({"status": {"enum": [200, 201, 400, 404, 500]}, "body": _s(30)})),
    ("a version number", _obj({"version": {"type": "string", "pattern": "^[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}$"}})),
    ("an ISBN", _obj({"isbn": {"type": "string", "pattern": "^97[89][0-9]{10}$"}})),
    ("a country code", _obj({"code": {"type": "string", "minLength": 2, "maxLength": 2, "pattern": "^[A-Z]+$"}})),
    ("a one-word answer", _obj({"word": {"type": "string", "minLength": 1, "maxLength": 12, "pattern": "^[a-z]+$"}})),
    ("a calendar with meetings", _obj({"day": {"enum": ["mon", "tue", "wed", "thu", "fri"]},
                                       "meetings": _arr(_obj({"title": _s(20), "hour": _i(8, 18)}), 0, 3)})),
    ("a chess move", _obj({"from": {"type": "string", "pattern": "^[a-h][1-8]$"},
                           "to": {"type": "string", "pattern": "^[a-h][1-8]$"}})),
    ("a small inventory", _obj({"warehouse": _s(), "stock": _arr(_obj({"item": _s(12), "count": _i(0, 500)},
                                                                          required=["item"]), 1, 3)})),
    ("a review with pros and cons", _obj({"pros": _arr(_s(20), 1, 2), "cons": _arr(_s(20), 0, 2),
                                          "score": _i(1, 10)})),
    ("a geo location", _obj({"lat": _n(-90, 90), "lon": _n(-180, 180), "name": _s(20)})),
    ("a list of key value pairs", _obj({"pairs": _arr(_obj({"key": _s(10), "value": {"anyOf": [_s(10), _i(0, 99)]}}),
                                                      1, 3)})),
]
