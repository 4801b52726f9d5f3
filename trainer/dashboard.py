"""Training dashboard numbers: the gradient norm every step, LoRA weight/gradient histograms."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from trainer.train import Run


def grad_norm(run: Run) -> float:
    """Global L2 norm of the LoRA gradients (before clipping), clipping when train.max_grad_norm is set."""
    params = [p for p in run.model.parameters() if p.requires_grad]
    if run.cfg.train.max_grad_norm is not None:
        return float(run.accelerator.clip_grad_norm_(params, run.cfg.train.max_grad_norm))
    grads = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def lora_histograms(run: Run) -> dict[str, torch.Tensor]:
    """Weights and gradients of each LoRA matrix kind (e.g. q_proj.lora_A), all layers together."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in run.peft_model.named_parameters():
        if not p.requires_grad or "lora_" not in name:
            continue
        parts = name.split(".")
        kind = next(x for x in parts if x.startswith("lora_"))
        key = f"{parts[parts.index(kind) - 1]}.{kind}"
        groups.setdefault(f"lora_weights/{key}", []).append(p.detach().flatten())
        if p.grad is not None:
            groups.setdefault(f"lora_grads/{key}", []).append(p.grad.detach().flatten())
    return {k: torch.cat(v) for k, v in groups.items()}
