"""Paths and tiny dataset builders shared by the trainer tests."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE_NAME = "smollm2-135m-instruct"
MODELS_DIR = REPO / "models"


def write_jsonl(path: Path, records: list) -> Path:
    """Records are dicts (dumped as JSON) or raw strings (written as-is, e.g. a broken line)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
