"""Resumable checkpoints: out_dir/checkpoints/step-NNNNNN/, written atomically.

A checkpoint holds the LoRA weights, optimizer and scheduler state, every process's RNG states
and the trainer state (step, loss history); for AdaLoRA the weights at full size and the rank
allocator's state (trainer/adalora.py). The data position is the step itself: batches are a
pure function of (seed, step), so resuming at step k replays exactly the batches k, k+1, ...
Files go into a `.tmp-step-NNNNNN` directory that is renamed into place only when complete, so a
run killed mid-write leaves no directory that `latest()` would pick.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer import adalora
from trainer.errors import TrainerError

STATE_FILE = "trainer_state.json"
BEST_DIR = "best"  # checkpoints/best/: the LoRA weights of the best eval so far


@dataclass
class RunState:
    """Everything the loop carries between steps, saved and restored as a whole."""

    step: int = 0  # optimizer steps done
    train_losses: list[list[float]] = field(default_factory=list)  # [step, loss]
    eval_losses: list[list[float]] = field(default_factory=list)  # [step, eval loss] of periodic evals
    best_eval: float | None = None  # lowest eval loss so far
    best_step: int | None = None  # the step whose weights are in checkpoints/best/
    bad_evals: int = 0  # evals in a row without improvement (early stopping)
    train_seconds: float = 0.0  # summed over resumes
    tokens_per_s: float | None = None  # of the last (resumed) session
    fingerprint: dict[str, Any] = field(default_factory=dict)  # config keys a resume must match

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunState:
        values = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TrainerError(f"trainer state has unknown fields {unknown}; written by another version?")
        return cls(**values)


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


def save_lora(peft_model, path: Path) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    if adalora.is_adalora(peft_model):  # PEFT's state dict would drop the pruned triplets
        weights = adalora.checkpoint_weights(peft_model)
    else:
        weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    save_file(weights, path)


def load_lora(peft_model, path: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if adalora.is_adalora(peft_model):
        adalora.load_checkpoint_weights(peft_model, load_file(path))
    else:
        set_peft_model_state_dict(peft_model, load_file(path))


def best_file(root: Path, step: int) -> Path:
    return root / BEST_DIR / f"step-{step:06d}.safetensors"


def save_best(root: Path, step: int, peft_model) -> Path:
    """Write the live LoRA weights as checkpoints/best/step-N.safetensors (atomically).

    Earlier bests stay until the run finishes: a resumed checkpoint may name one of them.
    """
    final = best_file(root, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(".tmp-" + final.name)
    save_lora(peft_model, tmp)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final


def commit(root: Path, step: int, peft_model, optimizer, scheduler, state: RunState, keep: int = 2) -> Path:
    """Main process: write weights/optimizer/state into the temp dir, rename it, prune old ones."""
    tmp = tmp_dir(root, step)
    tmp.mkdir(parents=True, exist_ok=True)
    save_lora(peft_model, tmp / "adapter_model.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if adalora.is_adalora(peft_model):
        adalora.save_allocator(peft_model, tmp / adalora.ALLOCATOR_FILE)
    (tmp / STATE_FILE).write_text(state.to_json())  # last: its presence marks completeness
    _fsync_tree(tmp)
    final = step_dir(root, step)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in sorted(root.glob("step-*"), key=lambda p: p.name)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore(path: Path, peft_model, optimizer, scheduler, rank: int) -> RunState:
    """Load a checkpoint into the live objects; return the saved trainer state."""
    rng_file = path / f"rng-{rank}.pt"
    if not rng_file.is_file():
        raise TrainerError(
            f"{path} has no RNG state for process {rank}; resume with the same number of processes "
            "or start a fresh out_dir"
        )
    load_lora(peft_model, path / "adapter_model.safetensors")
    if adalora.is_adalora(peft_model):
        adalora.load_allocator(peft_model, path / adalora.ALLOCATOR_FILE)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(rng_file, weights_only=False))
    return RunState.from_json((path / STATE_FILE).read_text())
