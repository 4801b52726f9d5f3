"""Checkpoints: atomic (a half-written one is never picked), and exact resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainer.sample_data import MODELS_DIR, REPO
from trainer import checkpoint


def test_latest_ignores_temp_and_incomplete_dirs(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step-000002", "step-000010"):
        (root / name).mkdir(parents=True)
        (root / name / checkpoint.STATE_FILE).write_text("{}")
    (root / ".tmp-step-000012").mkdir()  # killed while writing: never renamed
    (root / ".tmp-step-000012" / checkpoint.STATE_FILE).write_text("{}")
    (root / "step-000014").mkdir()  # no state file: not a complete checkpoint
    assert checkpoint.latest(root) == root / "step-000010"
    assert checkpoint.latest(tmp_path / "none") is None


def train_cmd(dataset: Path, out_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "loraplane", "train",
        "--models_dir", str(MODELS_DIR), "--out_dir", str(out_dir),
        "--data.train", str(dataset), "--data.eval", "null", "--data.max_seq_len", "64",
        "--lora.r", "4", "--lora.dropout", "0.1",  # dropout: the RNG state must be restored too
        "--train.max_steps", "8", "--train.batch_size", "2", "--train.save_every", "2",
        "--train.warmup_ratio", "0.25", "--publish.enabled", "false",
    ]  # fmt: skip


def losses(out_dir: Path) -> list[list[float]]:
    return json.loads((out_dir / "summary.json").read_text())["train_losses"]


@pytest.mark.slow
def test_kill_9_then_resume_continues_the_same_loss_curve(tmp_path, tiny_dataset, base_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # same threads: same sums
    reference = tmp_path / "uninterrupted"
    subprocess.run(train_cmd(tiny_dataset, reference), cwd=REPO, env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(tiny_dataset, killed), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while checkpoint.latest(killed / "checkpoints") is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "summary.json").exists()
    resumed_from = checkpoint.latest(killed / "checkpoints")
    assert resumed_from is not None and resumed_from.name != "step-000008"

    subprocess.run(train_cmd(tiny_dataset, killed), cwd=REPO, env=env, check=True, capture_output=True)
    expected, got = losses(reference), losses(killed)
    assert [s for s, _ in got] == list(range(1, 9))
    for (step, want), (_, have) in zip(expected, got, strict=True):
        assert have == pytest.approx(want, rel=1e-5, abs=1e-7), f"step {step}"
