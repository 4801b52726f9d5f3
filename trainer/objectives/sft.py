"""train.method sft: cross-entropy on the answer tokens (completion-only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.objectives.base import Objective
from trainer.objectives.logps import answer_logits


class SFT(Objective):
    """Cross-entropy on answer tokens (completion-only)."""

    name = "sft"

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, targets, _ = answer_logits(self.causal_lm, batch)
        return F.cross_entropy(logits, targets, reduction="sum"), {}
