"""Dataset files -> validated conversations (lists of chat messages).

Accepted record shapes (one per JSONL line, or one per row of a file `datasets` reads):
    chat (OpenAI):      {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}
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

Messages = list[dict[str, str]]
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
CHAT_ROLES = ("system", "user", "assistant")


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


def _check_messages(messages: Any) -> Messages:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in CHAT_ROLES:
            raise ValueError(f"message {i} needs a role in {CHAT_ROLES}, got {msg!r:.80}")
        if not isinstance(msg.get("content"), str):
            raise ValueError(f"message {i} ({msg['role']}) needs string content")
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers:
        raise ValueError("no assistant message to train on")
    if any(not m["content"].strip() for m in answers):
        raise ValueError("empty assistant answer")
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def to_messages(record: Any, fmt: str) -> Messages:
    """One record in `fmt` (or auto-detected) as chat messages; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    fmt = detect_format(record) if fmt == "auto" else fmt
    if fmt == "chat":
        if "messages" not in record:
            raise ValueError("missing field 'messages'")
        return _check_messages(record["messages"])
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
