"""End-to-end: `loraplane train` on the real base for 2 steps, then the files it must write."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.trainer.sample_data import BASE_NAME, MODELS_DIR, REPO
from trainer.cli import main


def heldout_subset(tmp_path: Path, n: int) -> Path:
    lines = (REPO / "data/demo/heldout.jsonl").read_text().splitlines()[:n]
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def demo_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "configs/train/demo.yaml"),
        "--models_dir", str(MODELS_DIR),
        "--data.train", str(REPO / "data/demo/train.jsonl"),
        "--out_dir", str(tmp_path / "run"),
        "--publish.adapters_dir", str(tmp_path / "adapters"),
        "--publish.name", "test-adapter",
        "--publish.version", "v1",
        *extra,
    ]  # fmt: skip


def test_unservable_rank_fails_before_training(tmp_path, capsys):
    assert main(demo_args(tmp_path, "--lora.r", "32")) == 2
    err = capsys.readouterr().err
    assert err.startswith("loraplane train: error:") and "rank 32 is outside 1..16" in err
    assert not (tmp_path / "run").exists()


def test_bad_override_is_a_one_line_error(tmp_path, capsys):
    assert main(demo_args(tmp_path, "--train.max_stepz", "3")) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.max_stepz'" in err and err.count("\n") == 1


@pytest.mark.slow
def test_train_evaluate_publish(tmp_path, base_dir, capsys):
    args = demo_args(
        tmp_path, "--train.max_steps", "2", "--train.batch_size", "2", "--train.eval_every", "1",
        "--data.max_seq_len", "96", "--data.eval", str(heldout_subset(tmp_path, 4)),
    )  # fmt: skip
    assert main(args) == 0
    assert "published" in capsys.readouterr().out

    version = tmp_path / "adapters" / "test-adapter" / "v1"
    assert sorted(p.name for p in version.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "loraplane-adapter.json",
    ]  # fmt: skip
    adapter_config = json.loads((version / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == BASE_NAME  # a registry name, not a machine path
    assert adapter_config["r"] == 16 and not adapter_config["use_dora"] and not adapter_config["modules_to_save"]
    manifest = json.loads((version / "loraplane-adapter.json").read_text())
    assert manifest["base"]["name"] == BASE_NAME
    assert (
        manifest["base"]["weights_sha256"]
        == json.loads((base_dir / "loraplane-base.json").read_text())["weights_sha256"]
    )
    assert manifest["lora"] == {"r": 16, "alpha": 32, "target_modules": ["k_proj", "o_proj", "q_proj", "v_proj"],
                                "rslora": False}  # fmt: skip
    assert manifest["eval"]["metric"] == "exact_match" and manifest["eval"]["n"] == 4
    assert 0.0 <= manifest["eval"]["value"] <= 1.0 and manifest["eval"]["eval_loss"] > 0
    assert manifest["config"]["train"]["max_steps"] == 2 and len(manifest["dataset"]["sha256"]) == 64

    run = tmp_path / "run"
    png = (run / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] > 100
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "train/loss" in m] == [1, 2]
    assert [m["step"] for m in metrics if "eval/loss" in m] == [1, 2]  # periodic, then final

    # the published adapter loads with PEFT on the base and has learned something (B != 0)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), version)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)

    # published versions are immutable: the same version is refused before any training
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_truncating_every_answer_away_is_an_error(tmp_path, capsys, base_dir):
    assert main(demo_args(tmp_path, "--data.max_seq_len", "16", "--publish.enabled", "false")) == 2
    assert "lost their answers to truncation at data.max_seq_len=16" in capsys.readouterr().err


def test_skip_bad_lines_flag_and_print_config(capsys):
    assert main(["--config", str(REPO / "configs/train/demo.yaml"), "--skip-bad-lines", "--print-config"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["data"]["skip_bad_lines"] is True and resolved["publish"]["version"] == "v1"
