"""Resumable checkpoints: out_dir/checkpoints/step-NNNNNN/, written atomically.

A checkpoint holds the LoRA weights, optimizer and scheduler state, every process's RNG states
and the trainer state (step, loss history). The data position is the step itself: batches are a
pure function of (seed, step), so resuming at step k replays exactly the batches k, k+1, ...
Files go into a `.tmp-step-NNNNNN` directory that is renamed into place only when complete, so a
run killed mid-write leaves no directory that `latest()` would pick.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.errors import TrainerError

STATE_FILE = "trainer_state.json"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def tmp_dir(root: Path, step: int) -> Path:
    return root / f".tmp-step-{step:06d}"


def latest(root: Path) -> Path | None:
    """Newest complete checkpoint (temp directories start with '.' and are ignored)."""
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(path: Path) -> None:
    for file in path.iterdir():
        with file.open("rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_process_rng(root: Path, step: int, rank: int) -> None:
    """Every process writes its own RNG state into the temp dir before the main one commits it."""
    tmp = tmp_dir(root, step)
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), tmp / f"rng-{rank}.pt")


def commit(root: Path, step: int, peft_model, optimizer, scheduler, state: dict[str, Any], keep: int = 2) -> Path:
    """Main process: write weights/optimizer/state into the temp dir, rename it, prune old ones."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    tmp = tmp_dir(root, step)
    tmp.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    save_file(weights, tmp / "adapter_model.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / STATE_FILE).write_text(json.dumps(state))  # last: its presence marks completeness
    _fsync_tree(tmp)
    final = step_dir(root, step)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in sorted(root.glob("step-*"), key=lambda p: p.name)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore(path: Path, peft_model, optimizer, scheduler, rank: int) -> dict[str, Any]:
    """Load a checkpoint into the live objects; return the saved trainer state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    rng_file = path / f"rng-{rank}.pt"
    if not rng_file.is_file():
        raise TrainerError(
            f"{path} has no RNG state for process {rank}; resume with the same number of processes "
            "or start a fresh out_dir"
        )
    set_peft_model_state_dict(peft_model, load_file(path / "adapter_model.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((path / STATE_FILE).read_text())
