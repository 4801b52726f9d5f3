"""Training objectives: small loss modules behind one interface (train.method sft | dpo | distill).

    objective.collate(examples, pad_id) -> batch of tensors
    objective(batch) -> (summed loss, {metric: summed value})

Losses and metrics are sums; the loop divides by the step's total weight (`Example.n_trained`:
trained tokens for sft/distill, pairs for dpo), so gradient accumulation and several processes
give the gradient of one big batch. An objective is a module so DDP can wrap it; the model it
trains is `objective.causal_lm` (the PEFT model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.tokens import IGNORE, Encoded, collate


def answer_logits(causal_lm, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [K, vocab], targets [K], row of each [K]) at the K positions that have a target.

    The LM head runs only there: answers are ~1/4 of a chat sample, and a 49k-vocab head over
    every position is a fifth of the model's FLOPs.
    """
    lm = causal_lm.get_base_model() if hasattr(causal_lm, "get_base_model") else causal_lm
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    hidden = lm.get_decoder()(**inputs, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    rows = torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)[keep]
    return lm.get_output_embeddings()(hidden[:, :-1][keep]).float(), targets[keep], rows


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each of the K answer positions, [K]."""
    return torch.gather(logits.log_softmax(-1), 1, targets[:, None]).squeeze(1)


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum of log p(target) per row: the log-probability of each row's whole answer, [n_rows]."""
    per_token = token_logps(logits, targets)
    return torch.zeros(n_rows, device=logits.device, dtype=per_token.dtype).index_add(0, rows, per_token)


def chosen_nll(per_token: torch.Tensor, rows: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """Mean negative log-likelihood of the chosen answers' tokens (rows 0..n_pairs-1): TRL's `sft`
    loss term, which `loss_type=["sigmoid", "sft"]` adds to DPO (RPO, Pang et al. 2024)."""
    return -per_token[rows < n_pairs].mean()


def dpo_losses(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid DPO (Rafailov et al. 2023) per pair: (losses, reward margins).

    reward = beta * (log pi(y|x) - log pi_ref(y|x)); loss = -log sigmoid(reward_chosen - reward_rejected).
    """
    margins = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -F.logsigmoid(margins), margins


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over tokens of KL(teacher || student), both softened by `temperature` ([K, vocab] logits)."""
    t_logp = (teacher / temperature).log_softmax(-1)
    s_logp = (student / temperature).log_softmax(-1)
    return (t_logp.exp() * (t_logp - s_logp)).sum()


class SFT(torch.nn.Module):
    """Cross-entropy on answer tokens (completion-only)."""

    name = "sft"

    def __init__(self, causal_lm):
        super().__init__()
        self.causal_lm = causal_lm

    def collate(self, examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(examples, pad_id)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, targets, _ = answer_logits(self.causal_lm, batch)
        return F.cross_entropy(logits, targets, reduction="sum"), {}


@dataclass
class Pair:
    """One preference pair, encoded, with the reference model's answer log-probs (set once)."""

    chosen: Encoded
    rejected: Encoded
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0

    @property
    def input_ids(self) -> list[int]:  # for length grouping and token counts: both sequences
        return self.chosen.input_ids + self.rejected.input_ids

    @property
    def n_trained(self) -> int:  # the dpo loss is a mean over pairs: each pair weighs 1
        return 1


class DPO(torch.nn.Module):
    """Sigmoid DPO: chosen and rejected answers go through the model in one batch.

    With `sft_weight` w > 0, each micro-batch also adds w * (mean NLL of its chosen tokens) per pair
    (TRL's loss_type ["sigmoid", "sft"], loss_weights [1, w]): DPO alone may lower the chosen
    answers' likelihood while it widens the margin; the NLL term keeps them likely.
    """

    name = "dpo"

    def __init__(self, causal_lm, beta: float, sft_weight: float = 0.0):
        super().__init__()
        self.causal_lm = causal_lm
        self.beta = beta
        self.sft_weight = sft_weight

    def collate(self, pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
        batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
        batch["ref_chosen"] = torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float32)
        return batch

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = batch["ref_chosen"].shape[0]
        logits, targets, rows = answer_logits(self.causal_lm, batch)
        per_token = token_logps(logits, targets)
        logps = torch.zeros(2 * n, device=logits.device, dtype=per_token.dtype).index_add(0, rows, per_token)
        losses, margins = dpo_losses(logps[:n], logps[n:], batch["ref_chosen"], batch["ref_rejected"], self.beta)
        detached = margins.detach()
        metrics = {"reward_margin": detached.sum(), "reward_accuracy": (detached > 0).float().sum()}
        loss = losses.sum()  # the loop divides by the step's pairs
        if self.sft_weight:
            nll = chosen_nll(per_token, rows, n)
            loss = loss + self.sft_weight * n * nll  # per pair, so that /pairs gives w * mean NLL
            metrics["chosen_nll"] = n * nll.detach()
        return loss, metrics


class Distill(torch.nn.Module):
    """(1-w)*CE + w*T^2*KL(teacher||student) on answer tokens; teacher logits under no_grad.

    T^2 keeps the KL gradient's scale independent of T (Hinton et al. 2015).
    """

    name = "distill"

    def __init__(self, causal_lm, teacher, kl_weight: float, temperature: float):
        super().__init__()
        self.causal_lm = causal_lm
        self.teacher = teacher  # trainer.teacher: .logits(batch) -> answer logits; not a submodule
        self.kl_weight = kl_weight
        self.temperature = temperature

    def collate(self, examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(examples, pad_id)

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
