"""Training dashboard numbers: the gradient norm every step, LoRA weight/gradient histograms."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from trainer.run import Run


def grad_norm(run: Run) -> torch.Tensor:
    """Global L2 norm of the trainable (LoRA) gradients; it only measures (the loop clips)."""
    grads = [p.grad.detach() for p in run.model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, 2.0) for g in grads]), 2.0)


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
