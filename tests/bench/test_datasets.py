import json

import pytest

from servewise.bench.datasets import DatasetEntry, dataset_text, detect_format, load_dataset

from .factories import DATA_DIR


def test_alpaca_seed_tasks():
    entries = load_dataset(DATA_DIR / "alpaca_tiny.jsonl")
    assert entries[0] == DatasetEntry((("user", "Name the capital city of the given country.\n\nNorway"),),
                                      "The capital of Norway is Oslo.")
    assert entries[1].messages == (("user", "Write a short poem about the first snow of winter."),)
    assert len(entries) == 3


def test_alpaca_data_with_top_level_fields(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Add.", "input": "1 and 2", "output": "3"}]))
    assert load_dataset(path) == [DatasetEntry((("user", "Add.\n\n1 and 2"),), "3")]


def test_sharegpt_first_human_turn_and_its_answer():
    entries = load_dataset(DATA_DIR / "sharegpt_tiny.json")
    assert entries == [
        DatasetEntry((("system", "You are terse."), ("user", "How do magnets work?")),
                     "Aligned electron spins create a field."),
        DatasetEntry((("user", "Suggest a name for a grey cat."),), "Ash."),
    ]  # the conversation with no human turn is skipped


def test_sharegpt_as_jsonl(tmp_path):
    path = tmp_path / "sharegpt.jsonl"
    path.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}]}) + "\n")
    assert load_dataset(path, "sharegpt") == [DatasetEntry((("user", "hi"),), None)]


def test_prompt_and_messages_lines():
    entries = load_dataset(DATA_DIR / "prompts_tiny.jsonl")
    assert entries[0] == DatasetEntry((("user", "Explain why bread rises."),), "Yeast makes gas that the dough traps.")
    assert entries[1] == DatasetEntry((("system", "Be brief."), ("user", "What is a leap year?")),
                                      "A year with one extra day.")
    assert entries[2] == DatasetEntry((("user", "Count to five."),), None, 7)


def test_detection_and_errors(tmp_path):
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"instruction": "x"}) == "alpaca"
    assert detect_format({"messages": []}) == "prompts"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no known key"}\n')
    with pytest.raises(ValueError, match="unknown dataset format"):
        load_dataset(bad)
    bad.write_text('{"prompt": 3}\n')
    with pytest.raises(ValueError, match="record 1"):
        load_dataset(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_dataset(bad)


def test_dataset_text_for_a_corpus(tmp_path):
    text = dataset_text(DATA_DIR / "alpaca_tiny.jsonl")
    assert "Norway" in text and "Oslo" in text
    plain = tmp_path / "book.txt"
    plain.write_text("Just prose.")
    assert dataset_text(plain) == "Just prose."
