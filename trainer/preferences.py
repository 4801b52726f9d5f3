"""Preference pairs for DPO: JSONL rows -> (prompt + chosen, prompt + rejected) conversations.

Accepted rows (TRL's field names):
    {"prompt": [messages] | "text", "chosen": "answer" | [assistant message], "rejected": ...}
    {"messages": [prompt messages], "chosen": "answer", "rejected": "answer"}
A row missing chosen/rejected, or whose chosen equals its rejected, is a `file:line` DataError,
or counted and skipped with data.skip_bad_lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.data import CHAT_ROLES, Dataset, Messages, _iter_jsonl, file_sha256
from trainer.errors import DataError


def is_preference_file(path: str) -> bool:
    """True when the first JSON row of a .jsonl file has chosen and rejected fields."""
    file = Path(path)
    if file.suffix != ".jsonl" or not file.is_file():
        return False
    for _, record in _iter_jsonl(file):
        return isinstance(record, dict) and "chosen" in record and "rejected" in record
    return False


def _prompt(record: dict[str, Any]) -> Messages:
    prompt = record.get("prompt", record.get("messages"))
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError("needs 'prompt' (a string or a list of messages) or 'messages'")
    for i, msg in enumerate(prompt):
        if not isinstance(msg, dict) or msg.get("role") not in CHAT_ROLES or not isinstance(msg.get("content"), str):
            raise ValueError(f"prompt message {i} needs a role in {CHAT_ROLES} and string content")
    if prompt[-1]["role"] == "assistant":
        raise ValueError("the prompt must end with a user (or system) message, not the assistant's answer")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _answer(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") != "assistant":
            raise ValueError(f"'{key}' must be one assistant message, got role {value[0].get('role')!r}")
        value = value[0].get("content")
    if value is None:
        raise ValueError(f"missing field '{key}'")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' must be a non-empty string or [{{'role': 'assistant', 'content': ...}}]")
    return value


def to_pair(record: Any) -> tuple[Messages, Messages]:
    """One row as (chosen conversation, rejected conversation); ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    prompt = _prompt(record)
    chosen, rejected = _answer(record, "chosen"), _answer(record, "rejected")
    if chosen.strip() == rejected.strip():
        raise ValueError("chosen and rejected are identical: the pair prefers nothing")
    as_answer = lambda text: prompt + [{"role": "assistant", "content": text}]  # noqa: E731
    return as_answer(chosen), as_answer(rejected)


def load_preference_file(path: str, skip_bad_lines: bool = False) -> Dataset:
    """A Dataset whose conversations end in the chosen answers and `rejected` in the rejected ones."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"preference file {path} not found")
    if file.suffix != ".jsonl":
        raise DataError(f"{path}: preference data must be .jsonl, got {file.suffix!r}")
    chosen, rejected, skipped = [], [], 0
    for line_no, record in _iter_jsonl(file):
        try:
            if isinstance(record, ValueError):
                raise record
            c, r = to_pair(record)
        except ValueError as exc:
            if not skip_bad_lines:
                raise DataError(f"{path}:{line_no}: {exc} (fix the line, or pass --skip-bad-lines)") from None
            skipped += 1
            continue
        chosen.append(c)
        rejected.append(r)
    if not chosen:
        raise DataError(f"{path}: no usable preference pairs ({skipped} bad lines skipped)")
    return Dataset(path=path, conversations=chosen, skipped=skipped, sha256=file_sha256(file), rejected=rejected)
