"""Dataset files: every accepted format, and bad lines reported with file, line and reason."""

from __future__ import annotations

import pytest

from tests.trainer.sample_data import chat, write_jsonl
from trainer.data import load_dataset_file, split_validation, to_messages
from trainer.errors import DataError

EXPECTED = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        (chat("Q", "A"), "chat"),
        ({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}, "sharegpt"),
        ({"instruction": "Q", "input": "", "output": "A"}, "alpaca"),
        ({"prompt": "Q", "completion": "A"}, "prompt_completion"),
    ],
)
def test_formats_become_chat_messages(record, fmt):
    assert to_messages(record, fmt) == EXPECTED
    assert to_messages(record, "auto") == EXPECTED


def test_alpaca_input_is_appended_to_the_instruction():
    msgs = to_messages({"instruction": "Translate", "input": "hola", "output": "hello"}, "alpaca")
    assert msgs[0]["content"] == "Translate\n\nhola"


def test_sharegpt_system_and_multi_turn():
    record = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "1"},
            {"from": "gpt", "value": "a"},
            {"from": "human", "value": "2"},
            {"from": "gpt", "value": "b"},
        ]
    }
    assert [m["role"] for m in to_messages(record, "auto")] == ["system", "user", "assistant", "user", "assistant"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"messages": [', "invalid JSON"),
        ({"messages": [{"role": "user", "content": "Q"}]}, "no assistant message"),
        (chat("Q", "   "), "empty assistant answer"),
        ({"instruction": "Q"}, "unrecognised record"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "needs a role"),
        ({"prompt": "Q", "completion": 3}, "field 'completion' must be a string"),
    ],
)
def test_bad_line_names_file_line_and_reason(tmp_path, line, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [chat("Q", "A"), "", line, chat("Q", "A")])
    with pytest.raises(DataError) as err:
        load_dataset_file(str(path))
    assert f"{path}:3: " in str(err.value) and reason in str(err.value)
    assert "--skip-bad-lines" in str(err.value)


def test_skip_bad_lines_counts_them(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [chat("Q", "A"), "not json", chat("Q", ""), chat("Q2", "A2")])
    data = load_dataset_file(str(path), skip_bad_lines=True)
    assert data.skipped == 2 and len(data.conversations) == 2


def test_forced_format_mismatch_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [chat("Q", "A")])
    with pytest.raises(DataError, match="d.jsonl:1: missing field 'conversations'"):
        load_dataset_file(str(path), fmt="sharegpt")


def test_other_file_types_through_datasets(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\nQ,A\nQ2,A2\n")
    data = load_dataset_file(str(path))
    assert data.conversations[0] == EXPECTED and len(data.conversations) == 2


def test_validation_split_by_ratio(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [chat(f"Q{i}", f"A{i}") for i in range(20)])
    train, val = split_validation(load_dataset_file(str(path)), 0.2, seed=0)
    assert len(val.conversations) == 4 and len(train.conversations) == 16
    questions = {c[0]["content"] for c in train.conversations} | {c[0]["content"] for c in val.conversations}
    assert len(questions) == 20  # disjoint and complete


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset_file(str(tmp_path / "nope.jsonl"))
