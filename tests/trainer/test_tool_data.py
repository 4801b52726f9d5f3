"""Tool-call training rows (trainer/data.py, trainer/tool_calls.py) rendered with the shipped
template: bad rows name file:line and the field; labels cover exactly the assistant turns (calls
included); the manifest records the template."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from tests.trainer.sample_data import REPO, write_jsonl
from trainer.data import load_dataset_file
from trainer.errors import DataError
from trainer.publish import build_manifest
from trainer.tokens import IGNORE, apply_template_override, encode, template_record

TEMPLATE = REPO / "configs" / "templates" / "tool-pythonic.jinja"
TOOLS = json.loads((REPO / "data" / "tools" / "tools.json").read_text())
CALL = {
    "id": "c1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
}
ROW = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris, celsius?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 12}'},
        {"role": "assistant", "content": "It is 12 degrees."},
    ],
    "tools": TOOLS,
}


@pytest.fixture(scope="module")
def tool_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    apply_template_override(tok, str(TEMPLATE))
    return tok


def broken(path: str, value) -> dict:  # noqa: ANN001
    """ROW with the value at a dotted path (ints index lists) replaced."""
    row = copy.deepcopy(ROW)
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = row
    for key in parents:
        node = node[key]
    node[last] = value
    return row


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("tools", {"get_weather": {}}, "field 'tools' must be a list"),
        ("tools.1", "convert_currency", "tools[1] must be a function object"),
        ("tools.0.function", {"parameters": {}}, "tools[0].function.name is missing"),
        (
            "messages.2.tool_calls.0.function.arguments",
            "{city: Paris}",
            "messages[2].tool_calls[0].function.arguments is not valid JSON",
        ),
        ("messages.2.tool_calls.0.function.arguments", "[1, 2]", "must be a JSON object"),
        ("messages.2.tool_calls.0.function.name", "send_email", "'send_email' is not a function in the row's 'tools'"),
        ("messages.2.content", "Let me check.", "messages[2] has both content and tool_calls"),
        ("messages.2", {"role": "assistant", "content": "no call"}, "messages[3] is a tool result but no earlier"),
        ("parallel_tool_calls", "yes", "'parallel_tool_calls' must be true or false"),
    ],
)
def test_bad_tool_rows_name_file_line_and_field(tmp_path: Path, path: str, value, named: str) -> None:  # noqa: ANN001
    file = write_jsonl(tmp_path / "tools.jsonl", [ROW, broken(path, value)])
    with pytest.raises(DataError) as info:
        load_dataset_file(str(file))
    assert f"{file}:2: " in str(info.value) and named in str(info.value)


def test_two_calls_are_refused_when_parallel_tool_calls_is_false(tmp_path: Path) -> None:
    row = broken("messages.2.tool_calls", [CALL, CALL]) | {"parallel_tool_calls": False}
    with pytest.raises(DataError, match=r":1: messages\[2\].tool_calls has 2 calls"):
        load_dataset_file(str(write_jsonl(tmp_path / "t.jsonl", [row])))


def trained_runs(tokenizer, enc) -> list[str]:  # noqa: ANN001
    """The decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(enc.input_ids, enc.labels, strict=True):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs, current = [*runs, current], []
    return [tokenizer.decode(run) for run in [*runs, current] if run]


def test_labels_cover_exactly_the_assistant_turns_call_included(tmp_path: Path, tool_tokenizer) -> None:
    (conversation,) = load_dataset_file(str(write_jsonl(tmp_path / "t.jsonl", [ROW]))).conversations
    enc = encode(tool_tokenizer, conversation, 512)
    assert trained_runs(tool_tokenizer, enc) == [
        '[get_weather(city="Paris", unit="celsius")]<|im_end|>',
        "It is 12 degrees.<|im_end|>",
    ]
    text = tool_tokenizer.decode(enc.input_ids)
    assert 'get_weather(city: string, unit: "celsius"|"fahrenheit")' in text  # the tools reached the prompt
    assert '<|im_start|>tool\n{"temp": 12}<|im_end|>' in text  # and the tool's result, untrained


def test_a_template_that_ignores_tools_is_refused(tmp_path: Path, tokenizer) -> None:  # noqa: ANN001
    (conversation,) = load_dataset_file(str(write_jsonl(tmp_path / "t.jsonl", [ROW]))).conversations
    with pytest.raises(DataError, match="ignores tools and tool_calls.*tool-pythonic.jinja"):
        encode(tokenizer, conversation, 512)  # the base's own template has no tools


def test_the_manifest_records_the_template(tool_tokenizer) -> None:  # noqa: ANN001
    record = template_record(tool_tokenizer, str(TEMPLATE))
    assert record == {"source": str(TEMPLATE), "sha256": hashlib.sha256(TEMPLATE.read_bytes()).hexdigest()}
    manifest = build_manifest(
        name="tools", version="v1", base={}, lora={}, dataset={}, config={}, eval_result={}, chat_template=record
    )
    assert manifest["chat_template"]["sha256"] == record["sha256"]


def test_the_shipped_task_loads(tool_tokenizer) -> None:  # noqa: ANN001
    train = load_dataset_file(str(REPO / "data" / "tools" / "train.jsonl"))
    heldout = load_dataset_file(str(REPO / "data" / "tools" / "heldout.jsonl"))
    assert len(train.conversations) >= 200 and len(heldout.conversations) >= 40
    plain = [c for c in train.conversations if not any(m.get("tool_calls") for m in c)]
    assert 0 < len(plain) < len(train.conversations) / 2  # some rows need no tool
    assert all(c[-1].get("tool_calls") for c in heldout.conversations)  # every held-out prompt needs a call
    assert max(len(encode(tool_tokenizer, c, 10_000).input_ids) for c in train.conversations) <= 192  # the recipe's max
