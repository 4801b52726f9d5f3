"""Multi-process training: `accelerate launch` with 2 CPU processes (gloo) matches one process.

Step s consumes global micro-batches [2s, 2s+1] either way: 2 processes x 1 micro-batch, or one
process accumulating 2. With the loss normalised over the whole step's tokens, both runs must
produce the same loss curve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fakes.servers import free_port
from tests.trainer.sample_data import MODELS_DIR, REPO


def train_args(dataset: Path, out_dir: Path, grad_accum: int) -> list[str]:
    return [
        "--models_dir", str(MODELS_DIR), "--out_dir", str(out_dir),
        "--data.train", str(dataset), "--data.eval", "null", "--data.max_seq_len", "64",
        "--lora.r", "4", "--lora.dropout", "0", "--train.max_steps", "3", "--train.batch_size", "2",
        "--train.grad_accum", str(grad_accum), "--train.length_grouping", "false",
        "--publish.enabled", "false",
    ]  # fmt: skip


@pytest.mark.slow
def test_two_cpu_processes_match_one_process_with_grad_accum(tmp_path, tiny_dataset, base_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "-m", "loraplane", "train",
    ]  # fmt: skip
    ddp = subprocess.run(launch + train_args(tiny_dataset, tmp_path / "ddp", 1), cwd=REPO, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = [sys.executable, "-m", "loraplane", "train", *train_args(tiny_dataset, tmp_path / "one", 2)]
    subprocess.run(single, cwd=REPO, env=env, check=True, capture_output=True)

    got = json.loads((tmp_path / "ddp" / "summary.json").read_text())["train_losses"]
    want = json.loads((tmp_path / "one" / "summary.json").read_text())["train_losses"]
    assert [s for s, _ in got] == [1, 2, 3]
    for (step, a), (_, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=1e-4), f"step {step}"
    assert (tmp_path / "ddp" / "adapter" / "adapter_model.safetensors").is_file()
