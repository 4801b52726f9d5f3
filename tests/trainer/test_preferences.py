"""Preference rows (DPO): the accepted shapes, bad rows as file:line errors, the shipped demo pairs."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.trainer.sample_data import REPO, write_jsonl
from trainer.errors import ConfigError, DataError
from trainer.preferences import is_preference_file, load_preference_file, to_pair

USER = [{"role": "user", "content": "Q"}]


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": USER, "chosen": [{"role": "assistant", "content": "A"}], "rejected": "B"},
        {"prompt": "Q", "chosen": "A", "rejected": "B"},
        {"messages": USER, "chosen": "A", "rejected": [{"role": "assistant", "content": "B"}]},
    ],
)
def test_shapes_become_two_conversations(record):
    chosen, rejected = to_pair(record)
    assert chosen == USER + [{"role": "assistant", "content": "A"}]
    assert rejected == USER + [{"role": "assistant", "content": "B"}]


def test_bad_rows_are_file_line_errors_or_skipped(tmp_path):
    good = {"prompt": "Q", "chosen": "A", "rejected": "B"}
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [good, {"prompt": "Q", "chosen": "A"}, {"prompt": "Q", "chosen": " A", "rejected": "A "}, "{broken", good],
    )
    with pytest.raises(DataError, match=r"p\.jsonl:2: missing field 'rejected'"):
        load_preference_file(str(path))
    only_third = write_jsonl(tmp_path / "q.jsonl", [good, {"prompt": "Q", "chosen": "A", "rejected": "A"}])
    with pytest.raises(DataError, match=r"q\.jsonl:2: chosen and rejected are identical"):
        load_preference_file(str(only_third))
    data = load_preference_file(str(path), skip_bad_lines=True)
    assert (len(data.conversations), len(data.rejected), data.skipped) == (2, 2, 3)


def test_sft_run_on_preference_file_names_the_method(tmp_path):
    from trainer.config import load_config
    from trainer.objectives import objective_for

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}])
    assert is_preference_file(str(path))
    cfg = load_config(None, ["--data.train", str(path), "--data.eval", "null"])
    with pytest.raises(ConfigError, match="--train.method dpo"):
        objective_for(cfg.train.method).load_data(cfg)


def test_shipped_demo_pairs_match_their_generator():
    spec = importlib.util.spec_from_file_location("make_preferences", REPO / "data/demo/make_preferences.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, text in module.build().items():
        assert (REPO / "data/demo" / name).read_text() == text, f"rerun data/demo/make_preferences.py ({name})"
    rows = [json.loads(x) for x in (REPO / "data/demo/preferences-heldout.jsonl").read_text().splitlines()]
    for row in rows:  # exactly one field differs, and the rejected answer is still valid JSON
        chosen, rejected = json.loads(row["chosen"][0]["content"]), json.loads(row["rejected"][0]["content"])
        assert sum(chosen[k] != rejected[k] for k in chosen) == 1 and chosen.keys() == rejected.keys()
    assert len(load_preference_file(str(REPO / "data/demo/preferences-train.jsonl")).conversations) == 480
