"""The demo's shipped data is what data/demo/generate.py writes, and its splits keep their promises:
held-out (golden) names never occur in train; the live traffic the loop's users rate shares the
golden set's vocabulary but never one of its prompts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def generator():
    spec = importlib.util.spec_from_file_location("demo_generate", REPO / "data/demo/generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_demo_data_matches_its_generator() -> None:
    for name, rows in generator().generate().items():
        text = "".join(json.dumps(row) + "\n" for row in rows)
        assert (REPO / "data/demo" / name).read_text() == text, f"rerun data/demo/generate.py ({name})"


def test_live_traffic_is_golden_distribution_but_never_a_golden_prompt() -> None:
    gen = generator()
    splits = gen.generate()
    prompts = {name: [row["messages"][0]["content"] for row in rows] for name, rows in splits.items()}
    assert not set(prompts["live.jsonl"]) & set(prompts["heldout.jsonl"])
    assert len(set(prompts["live.jsonl"])) > 0.9 * len(prompts["live.jsonl"])
    held_names = set(gen.HELDOUT_FIRST) | set(gen.HELDOUT_LAST) | set(gen.HELDOUT_CITY)
    for split in ("heldout.jsonl", "live.jsonl"):
        for row in splits[split]:
            answer = json.loads(row["messages"][1]["content"])
            assert set(answer["name"].split()) | {answer["city"]} <= held_names, (split, answer)
    train_words = {word for p in prompts["train.jsonl"] for word in p.replace(",", " ").replace(".", " ").split()}
    assert not held_names & train_words  # v1 and v2 never see a golden or live name
