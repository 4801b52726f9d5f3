"""train.method kto end to end with `loraplane train` on the real base: rated rows in, adapter out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.sample_data import MODELS_DIR, REPO, write_jsonl
from trainer.cli import main


def rated_rows(n: int, offset: int = 0) -> list[dict]:
    """Demo-task prompts with the reference answer (thumbs up) or one with a wrong age (thumbs down)."""
    rows = [json.loads(x) for x in (REPO / "data/demo/train.jsonl").read_text().splitlines()[offset : offset + n]]
    out = []
    for i, row in enumerate(rows):
        answer = row["messages"][-1]["content"]
        good = i % 2 == 0
        out.append({"prompt": row["messages"][:-1], "completion": answer if good else answer.replace(": ", ": 9", 2)})
        out[-1]["label"] = good
    return out


@pytest.mark.slow
def test_kto_trains_and_publishes_from_rated_rows(tmp_path):
    train = write_jsonl(tmp_path / "rated.jsonl", rated_rows(8))
    heldout = write_jsonl(tmp_path / "rated-eval.jsonl", rated_rows(4, offset=100))
    out, adapters = tmp_path / "run", tmp_path / "adapters"
    argv = [
        "--config", str(REPO / "configs/train/demo-kto.yaml"), "--models_dir", str(MODELS_DIR),
        "--lora.init_from", "null", "--lora.r", "4", "--lora.dropout", "0", "--out_dir", str(out),
        "--data.train", str(train), "--data.eval", str(heldout), "--data.max_seq_len", "96",
        "--train.batch_size", "4", "--train.max_steps", "2", "--train.lr", "1e-3",
        "--publish.adapters_dir", str(adapters), "--publish.name", "kto-test", "--publish.version", "v1",
        "--eval.max_new_tokens", "24",
    ]  # fmt: skip
    assert main(argv) == 0

    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {m["step"]: m for m in logged if "train/loss" in m}  # eval lines share the last step
    # a fresh adapter starts at the reference (the base): r = 0 and z0 = 0, so every row's loss is 1 - sigmoid(0)
    assert logged[1]["train/loss"] == pytest.approx(0.5, abs=1e-4) and logged[1]["train/kl"] == 0.0
    assert logged[2]["train/loss"] < 0.5 and logged[2]["train/kl"] >= 0.0 and logged[1]["train/grad_norm"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "kto" and summary["eval"]["rows"] == 4
    assert summary["eval"]["n"] == 2  # exact match against the desirable eval rows only
    assert 0.0 <= summary["eval"]["reward_accuracy"] <= 1.0
    assert summary["eval"]["reward_desirable"] > summary["eval"]["reward_undesirable"]
    manifest = json.loads((adapters / "kto-test" / "v1" / "loraplane-adapter.json").read_text())
    assert manifest["config"]["train"]["method"] == "kto" and manifest["config"]["kto"]["beta"] == 0.1


def test_shipped_kto_config_loads():
    from trainer.config import load_config
    from trainer.preferences import load_rated_file

    cfg = load_config(REPO / "configs/train/demo-kto.yaml")
    assert cfg.train.method == "kto" and cfg.lora.init_from == "demo-json@v1" and Path(REPO / cfg.data.eval).is_file()
    ratings = load_rated_file(str(REPO / cfg.data.train))  # the shipped thumbs (benchmarks/kto_proof.py)
    assert len(ratings.labels) == 96 and 0 < sum(ratings.labels) < 96
