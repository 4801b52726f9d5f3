"""train.method distill: (1-w)*CE + w*T^2*KL(teacher||student) on the answer tokens."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.objectives.base import Objective, Setting
from trainer.objectives.logps import answer_logits


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over tokens of KL(teacher || student), both softened by `temperature` ([K, vocab] logits)."""
    t_logp = (teacher / temperature).log_softmax(-1)
    s_logp = (student / temperature).log_softmax(-1)
    return (t_logp.exp() * (t_logp - s_logp)).sum()


class Distill(Objective):
    """(1-w)*CE + w*T^2*KL(teacher||student) on answer tokens; teacher logits under no_grad.

    T^2 keeps the KL gradient's scale independent of T (Hinton et al. 2015).
    """

    name = "distill"

    def __init__(self, causal_lm, teacher, kl_weight: float, temperature: float):
        super().__init__(causal_lm)
        self.teacher = teacher  # trainer.teacher: .logits(batch) -> answer logits; not a submodule
        self.kl_weight = kl_weight
        self.temperature = temperature

    @classmethod
    def build(cls, causal_lm, setting: Setting) -> Distill:
        from trainer.teacher import load_teacher

        cfg = setting.cfg
        teacher = load_teacher(
            cfg.distill.teacher, causal_lm, setting.tokenizer, setting.base_dir, setting.base_manifest,
            Path(cfg.publish.adapters_dir), setting.dtype,
        )  # fmt: skip
        return cls(causal_lm, teacher, cfg.distill.kl_weight, cfg.distill.temperature)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, targets, _ = answer_logits(self.causal_lm, batch)
        ce = F.cross_entropy(logits, targets, reduction="sum")
        if self.kl_weight == 0:
            return ce, {"ce": ce.detach()}
        with torch.no_grad():
            teacher_logits = self.teacher.logits(batch)
        kl = distill_kl(logits, teacher_logits, self.temperature)
        w, t2 = self.kl_weight, self.temperature**2
        return (1 - w) * ce + w * t2 * kl, {"ce": ce.detach(), "kl": kl.detach()}
