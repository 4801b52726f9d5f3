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
import torch

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


def adalora_config(dataset: Path, out_dir: Path):  # noqa: ANN201
    """8 steps of AdaLoRA: pruning in steps 3-5 (0-based), final ranks fixed at step 6; the
    checkpoint after step 4 lies mid-pruning (allocator statistics and a rank pattern both live)."""
    from trainer.config import load_config

    return load_config(None, [
        "--models_dir", str(MODELS_DIR), "--out_dir", str(out_dir),
        "--data.train", str(dataset), "--data.eval", "null", "--data.max_seq_len", "64",
        "--lora.method", "adalora", "--lora.dropout", "0.1", "--lora.target_modules", "[q_proj, v_proj]",
        "--lora.adalora.init_r", "4", "--lora.adalora.target_r", "2", "--lora.layers", "22-29",
        "--lora.adalora.tinit_ratio", "0.25", "--lora.adalora.tfinal_ratio", "0.25",
        "--train.max_steps", "8", "--train.batch_size", "2", "--train.save_every", "4", "--train.lr", "5e-3",
        "--train.warmup_ratio", "0.25", "--publish.enabled", "false",
    ])  # fmt: skip


def final_adalora(out_dir: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    weights = load_file(checkpoint.latest(out_dir / "checkpoints") / "adapter_model.safetensors")
    return weights, json.loads((out_dir / "adapter" / "adalora.json").read_text())["rank_pattern"]


@pytest.mark.slow
def test_adalora_resumed_mid_pruning_allocates_as_the_uninterrupted_run(tmp_path, tiny_dataset):
    import shutil

    from safetensors.torch import load_file, save_file

    from trainer.adalora import ALLOCATOR_FILE, AllocatorState
    from trainer.train import run_training

    reference = tmp_path / "uninterrupted"
    run_training(adalora_config(tiny_dataset, reference))
    saved = reference / "checkpoints" / "step-000004"
    state = AllocatorState.from_tensors(load_file(saved / ALLOCATOR_FILE))
    assert state.exp_avg_ipt and state.exp_avg_unc and state.rank_pattern, "the test needs a mid-pruning checkpoint"

    def resume(name: str) -> Path:  # a run interrupted right after that checkpoint, then resumed
        out_dir = tmp_path / name
        shutil.copytree(saved, out_dir / "checkpoints" / saved.name)
        return out_dir

    resumed = resume("resumed")
    run_training(adalora_config(tiny_dataset, resumed))
    assert [s for s, _ in losses(resumed)] == list(range(1, 9))
    for (step, want), (_, have) in zip(losses(reference), losses(resumed), strict=True):
        assert have == pytest.approx(want, rel=1e-5, abs=1e-7), f"step {step}"
    (want_weights, want_pattern), (got_weights, got_pattern) = final_adalora(reference), final_adalora(resumed)
    assert got_pattern == want_pattern and sum(map(sum, want_pattern.values())) < 4 * len(want_pattern)
    assert got_weights.keys() == want_weights.keys()
    for name, tensor in want_weights.items():
        torch.testing.assert_close(got_weights[name], tensor, rtol=1e-5, atol=1e-7, msg=name)

    # the statistics matter: restarted from zero (what a resume did before), the allocation differs
    restarted = resume("restarted")
    blank = {k: torch.zeros_like(v) if not k.startswith("rank_pattern/") else v for k, v in state.to_tensors().items()}
    save_file(blank, restarted / "checkpoints" / saved.name / ALLOCATOR_FILE)
    run_training(adalora_config(tiny_dataset, restarted))
    assert final_adalora(restarted)[1] != want_pattern
