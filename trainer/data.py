"""Dataset files -> validated conversations (lists of chat messages).

Accepted record shapes (one per JSONL line, or one per row of a file `datasets` reads):
    chat (OpenAI):      {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}
                        with tools: + "tools": [...], assistant "tool_calls", "tool" results,
                        "parallel_tool_calls"? (trainer/tool_calls.py; docs/tools.md)
    sharegpt:           {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}
    alpaca:             {"instruction": ..., "input": ... (optional), "output": ...}
    prompt_completion:  {"prompt": ..., "completion": ...}
Every shape becomes chat messages, rendered later with the tokenizer's chat template, so the
model is trained on exactly the text the serving engine will build from a chat request.
A bad record is reported with file, line and what is wrong (DataError), or counted and skipped.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import DataError
from trainer.tool_calls import check_tool_calls, check_tool_turns, check_tools

Messages = list[dict[str, Any]]
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
CHAT_ROLES = ("system", "user", "assistant", "tool")


class Conversation(list):
    """Chat messages plus the `tools` the conversation offers (None: none), which the chat template
    renders; a slice keeps the tools, so a prompt (conversation[:-1]) renders as it was trained."""

    def __init__(self, messages: Messages, tools: list[dict[str, Any]] | None = None) -> None:
        super().__init__(messages)
        self.tools = tools

    def __getitem__(self, index):  # type: ignore[override]
        got = super().__getitem__(index)
        return Conversation(got, self.tools) if isinstance(index, slice) else got


@dataclass
class Dataset:
    path: str
    conversations: list[Messages]
    skipped: int  # bad records skipped (only with skip_bad_lines)
    sha256: str  # of the file bytes, pinned in the adapter manifest
    rejected: list[Messages] = field(default_factory=list)  # preference data: parallel to conversations
    labels: list[bool] = field(default_factory=list)  # rated data (kto): True = a good answer; parallel

    def subset(self, indices: list[int], skipped: int = 0) -> Dataset:
        """The rows at `indices`, in that order, with their parallel fields."""
        pick = lambda rows: [rows[i] for i in indices] if rows else []  # noqa: E731
        return Dataset(
            self.path, pick(self.conversations), skipped, self.sha256, pick(self.rejected), pick(self.labels)
        )


def detect_format(record: dict[str, Any]) -> str:
    if "messages" in record:
        return "chat"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    raise ValueError(
        f"unrecognised record with keys {sorted(record)}; expected messages (chat), conversations "
        "(sharegpt), instruction/output (alpaca) or prompt/completion"
    )


def _text(record: dict[str, Any], key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _check_message(i: int, msg: Any, declared: set[str]) -> dict[str, Any]:
    """messages[i] normalised: role, content, and tool_calls / tool_call_id where they belong."""
    if not isinstance(msg, dict) or msg.get("role") not in CHAT_ROLES:
        raise ValueError(f"message {i} needs a role in {CHAT_ROLES}, got {msg!r:.80}")
    role, content = msg["role"], msg.get("content")
    if role == "assistant" and msg.get("tool_calls") is not None:
        if content not in (None, ""):
            raise ValueError(
                f"messages[{i}] has both content and tool_calls; the pythonic tool parser reads a call only "
                "when the answer is the call list alone: move the text to its own assistant message"
            )
        return {
            "role": role,
            "content": None,
            "tool_calls": check_tool_calls(msg["tool_calls"], declared, f"messages[{i}]"),
        }
    if not isinstance(content, str):
        raise ValueError(f"message {i} ({role}) needs string content")
    out = {"role": role, "content": content}
    if role == "tool" and isinstance(msg.get("tool_call_id"), str):
        out["tool_call_id"] = msg["tool_call_id"]
    return out


def _check_messages(messages: Any, tools: Any = None, parallel: Any = None) -> Messages:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    checked_tools = check_tools(tools) if tools is not None else None
    declared = {t["function"]["name"] for t in checked_tools or []}
    out = [_check_message(i, msg, declared) for i, msg in enumerate(messages)]
    check_tool_turns(out, parallel)
    answers = [m for m in out if m["role"] == "assistant"]
    if not answers:
        raise ValueError("no assistant message to train on")
    if any(not m.get("tool_calls") and not m["content"].strip() for m in answers):
        raise ValueError("empty assistant answer")
    if out[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    return Conversation(out, checked_tools) if checked_tools is not None else out


def to_messages(record: Any, fmt: str) -> Messages:
    """One record in `fmt` (or auto-detected) as chat messages; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    fmt = detect_format(record) if fmt == "auto" else fmt
    if fmt == "chat":
        if "messages" not in record:
            raise ValueError("missing field 'messages'")
        return _check_messages(record["messages"], record.get("tools"), record.get("parallel_tool_calls"))
    if fmt == "sharegpt":
        turns = record.get("conversations")
        if not isinstance(turns, list):
            raise ValueError("missing field 'conversations' (a list of {from, value})")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or turn.get("from") not in SHAREGPT_ROLES:
                raise ValueError(f"conversations[{i}] needs 'from' in {sorted(SHAREGPT_ROLES)}")
            messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": _text(turn, "value")})
        return _check_messages(messages)
    if fmt == "alpaca":
        instruction, extra = _text(record, "instruction"), _text(record, "input", required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return _check_messages(
            [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record, "output")}]
        )
    if fmt == "prompt_completion":
        return _check_messages(
            [
                {"role": "user", "content": _text(record, "prompt")},
                {"role": "assistant", "content": _text(record, "completion")},
            ]
        )
    raise ValueError(f"unknown format {fmt!r}")


def _iter_jsonl(path: Path):
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})")


def _iter_datasets_file(path: Path):
    """Non-JSONL files (json, csv, parquet) through `datasets`; 'line' is the 1-based row."""
    import datasets

    builder = {".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix)
    if builder is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json, .csv or .parquet")
    table = datasets.load_dataset(builder, data_files=str(path), split="train")
    yield from enumerate(table, start=1)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_dataset_file(path: str, fmt: str = "auto", skip_bad_lines: bool = False) -> Dataset:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"dataset file {path} not found")
    rows = _iter_jsonl(file) if file.suffix == ".jsonl" else _iter_datasets_file(file)
    conversations, skipped = [], 0
    for line_no, record in rows:
        try:
            if isinstance(record, ValueError):
                raise record
            conversations.append(to_messages(record, fmt))
        except ValueError as exc:
            if not skip_bad_lines:
                raise DataError(f"{path}:{line_no}: {exc} (fix the line, or pass --skip-bad-lines)") from None
            skipped += 1
    if not conversations:
        raise DataError(f"{path}: no usable examples ({skipped} bad lines skipped)")
    return Dataset(path=path, conversations=conversations, skipped=skipped, sha256=file_sha256(file))


def split_validation(dataset: Dataset, ratio: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out `ratio` of the examples (at least one), chosen by a seeded shuffle."""
    order = list(range(len(dataset.conversations)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * ratio))
    if n_val >= len(order):
        raise DataError(f"{dataset.path}: {len(order)} examples are too few for data.val_ratio {ratio}")
    return dataset.subset(sorted(order[n_val:]), dataset.skipped), dataset.subset(sorted(order[:n_val]))
