"""Preference data: pairs for DPO and rated (unpaired) answers for KTO, as conversations.

Accepted rows (TRL's field names), one JSON object per line of a .jsonl file:
    pairs (dpo):  {"prompt": [messages] | "text", "chosen": "answer" | [assistant message], "rejected": ...}
                  {"messages": [prompt messages], "chosen": "answer", "rejected": "answer"}
    rated (kto):  {"prompt": [messages] | "text", "completion": "answer" | [assistant message], "label": true}
A pair missing chosen/rejected or whose chosen equals its rejected, and a rated row without a JSON
boolean `label` or with an empty completion, is a `file:line` DataError, or counted and skipped
with data.skip_bad_lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.data import CHAT_ROLES, Dataset, Messages, _iter_jsonl, file_sha256
from trainer.errors import DataError


def _first_row_has(path: str, *keys: str) -> bool:
    file = Path(path)
    if file.suffix != ".jsonl" or not file.is_file():
        return False
    for _, record in _iter_jsonl(file):
        return isinstance(record, dict) and all(k in record for k in keys)
    return False


def is_preference_file(path: str) -> bool:
    """True when the first JSON row of a .jsonl file has chosen and rejected fields."""
    return _first_row_has(path, "chosen", "rejected")


def is_rated_file(path: str) -> bool:
    """True when the first JSON row of a .jsonl file has a `label` field (kto's rated answers)."""
    return _first_row_has(path, "label")


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


def to_rated(record: Any) -> tuple[Messages, bool]:
    """One kto row as (prompt + completion conversation, label); ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    prompt = _prompt(record)
    completion = _answer(record, "completion")
    label = record.get("label")
    if not isinstance(label, bool):
        got = "it is missing" if "label" not in record else f"got {label!r}"
        raise ValueError(f"'label' must be true (a good answer) or false (a bad one), a JSON boolean; {got}")
    return prompt + [{"role": "assistant", "content": completion}], label


def _parse_rows(path: str, parse, what: str, skip_bad_lines: bool) -> tuple[list, int, str]:
    """(parsed rows, bad lines skipped, sha256) of a .jsonl file; a bad line is a file:line DataError."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{what} file {path} not found")
    if file.suffix != ".jsonl":
        raise DataError(f"{path}: {what} data must be .jsonl, got {file.suffix!r}")
    rows, skipped = [], 0
    for line_no, record in _iter_jsonl(file):
        try:
            if isinstance(record, ValueError):
                raise record
            rows.append(parse(record))
        except ValueError as exc:
            if not skip_bad_lines:
                raise DataError(f"{path}:{line_no}: {exc} (fix the line, or pass --skip-bad-lines)") from None
            skipped += 1
    return rows, skipped, file_sha256(file)


def load_preference_file(path: str, skip_bad_lines: bool = False) -> Dataset:
    """A Dataset whose conversations end in the chosen answers and `rejected` in the rejected ones."""
    pairs, skipped, sha256 = _parse_rows(path, to_pair, "preference", skip_bad_lines)
    if not pairs:
        raise DataError(f"{path}: no usable preference pairs ({skipped} bad lines skipped)")
    chosen, rejected = [c for c, _ in pairs], [r for _, r in pairs]
    return Dataset(path=path, conversations=chosen, skipped=skipped, sha256=sha256, rejected=rejected)


def load_rated_file(path: str, skip_bad_lines: bool = False) -> Dataset:
    """A Dataset of prompt + completion conversations with `labels` (kto: True = desirable)."""
    rows, skipped, sha256 = _parse_rows(path, to_rated, "rated-answer", skip_bad_lines)
    if not rows:
        raise DataError(f"{path}: no usable rated answers ({skipped} bad lines skipped)")
    return Dataset(
        path=path, conversations=[c for c, _ in rows], skipped=skipped, sha256=sha256, labels=[x for _, x in rows]
    )
