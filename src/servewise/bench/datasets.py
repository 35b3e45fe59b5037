"""Dataset files of real prompts, in the formats people have at hand.

- ``prompts``: JSONL, one ``{"prompt": "..."}`` or ``{"messages": [{"role", "content"}, ...]}``
  a line; optional ``max_tokens`` (an output length) or a reference answer in
  ``output``/``completion``/``response`` (or a final assistant message).
- ``sharegpt``: a JSON array or JSONL of ``{"conversations": [{"from": "human"|"gpt", "value"}]}``;
  the first human turn is sent, the gpt turn after it is the reference answer.
- ``alpaca``: the Alpaca seed tasks (``instruction``, ``instances[].input``/``output``)
  or Alpaca data (``instruction``, ``input``, ``output``).

``auto`` picks the format from the first record's keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servewise.bench.client import Message

FORMATS = ("auto", "prompts", "sharegpt", "alpaca")
_REFERENCE_KEYS = ("output", "completion", "response")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                   "assistant": "assistant", "bard": "assistant", "bing": "assistant", "system": "system"}


@dataclass(frozen=True)
class DatasetEntry:
    messages: tuple[Message, ...]  # the conversation to send, ending with the user's turn
    reference_output: str | None = None  # the dataset's answer; its token count sets max_tokens
    max_tokens: int | None = None  # an output length the dataset line states outright

    @property
    def text(self) -> str:
        return "\n\n".join(content for _, content in self.messages)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-array file or a JSONL file."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        records = json.loads(text)
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON array of objects")
    else:
        records = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise ValueError(f"{path}:{line_no}: not JSON ({exc})") from None
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {i + 1} is not a JSON object")
    return records


def detect_format(record: dict[str, Any]) -> str:
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record:
        return "alpaca"
    if "prompt" in record or "messages" in record:
        return "prompts"
    raise ValueError(f"unknown dataset format: a record has keys {sorted(record)}; expected prompt, "
                     "messages, conversations (ShareGPT) or instruction (Alpaca)")


def load_dataset(path: str | Path, dataset_format: str = "auto") -> list[DatasetEntry]:
    if dataset_format not in FORMATS:
        raise ValueError(f"unknown dataset format {dataset_format!r}; expected one of {', '.join(FORMATS)}")
    records = read_records(path)
    if not records:
        raise ValueError(f"{path}: no records")
    fmt = detect_format(records[0]) if dataset_format == "auto" else dataset_format
    parse = {"prompts": _prompt_entry, "sharegpt": _sharegpt_entry, "alpaca": _alpaca_entry}[fmt]
    entries = []
    for i, record in enumerate(records):
        try:
            entry = parse(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: record {i + 1} is not valid {fmt} data: {exc}") from None
        if entry is not None:
            entries.append(entry)
    if not entries:
        raise ValueError(f"{path}: no usable {fmt} records")
    return entries


def dataset_text(path: str | Path) -> str:
    """All the text of a file: a dataset's prompts and answers, or a plain text file as is."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.lstrip().startswith(("{", "[")):
        return text
    parts = []
    for entry in load_dataset(path):
        parts.append(entry.text)
        if entry.reference_output:
            parts.append(entry.reference_output)
    return "\n\n".join(parts)


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string")
    return value


def _prompt_entry(record: dict[str, Any]) -> DatasetEntry | None:
    reference = next((record[k] for k in _REFERENCE_KEYS if isinstance(record.get(k), str)), None)
    if "messages" in record:
        messages = [(_string(m["role"], "role"), _string(m["content"], "content")) for m in record["messages"]]
        if messages and messages[-1][0] == "assistant":
            reference = reference or messages[-1][1]
            messages = messages[:-1]
    else:
        messages = [("user", _string(record["prompt"], "prompt"))]
    if not messages:
        return None
    max_tokens = record.get("max_tokens", record.get("output_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError("max_tokens must be a positive integer")
    return DatasetEntry(tuple(messages), reference, max_tokens)


def _sharegpt_entry(record: dict[str, Any]) -> DatasetEntry | None:
    messages: list[Message] = []
    turns = record["conversations"]
    for i, turn in enumerate(turns):
        role = _SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        value = _string(turn.get("value"), "value")
        if role == "system":
            messages.append((role, value))
        elif role == "user":
            messages.append((role, value))
            answer = next((t for t in turns[i + 1:] if _SHAREGPT_ROLES.get(str(t.get("from", "")).lower())
                           == "assistant"), None)
            return DatasetEntry(tuple(messages), answer and _string(answer.get("value"), "value"))
    return None  # no human turn: nothing to send


def _alpaca_entry(record: dict[str, Any]) -> DatasetEntry | None:
    instruction = _string(record["instruction"], "instruction")
    instances = record.get("instances")
    first = instances[0] if isinstance(instances, list) and instances else record
    context = first.get("input") or ""
    prompt = f"{instruction}\n\n{_string(context, 'input')}" if context else instruction
    output = first.get("output")
    return DatasetEntry((("user", prompt),), output if isinstance(output, str) and output else None)
