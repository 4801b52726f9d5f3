"""Shared fixtures for trainer tests: the real bundled base model and small dataset files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.trainer.sample_data import BASE_NAME, MODELS_DIR, chat, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def base_dir() -> Path:
    path = MODELS_DIR / BASE_NAME
    if not (path / "config.json").is_file():
        pytest.fail(f"base model missing at {path}; run `make base` (loraplane base pull {BASE_NAME}) first")
    return path


@pytest.fixture(scope="session")
def tokenizer(base_dir):
    from trainer.model import load_tokenizer

    return load_tokenizer(base_dir)


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """12 short examples whose answers differ in length (matters for loss normalisation)."""
    records = [chat(f"Repeat {i}:", " ".join(["ok"] * (1 + i % 5))) for i in range(12)]
    return write_jsonl(tmp_path / "tiny.jsonl", records)
