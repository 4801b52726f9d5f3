"""train.method dpo: sigmoid DPO on preference pairs against the starting point.

Preference metrics on eval pairs, per pair:
    preference_accuracy: the model scores the chosen answer above the rejected one,
                         log pi(chosen|x) > log pi(rejected|x)
    reward_accuracy / reward_margin: TRL's implicit-reward numbers, beta * (log pi - log pi_ref)
                         of chosen minus that of rejected (> 0, and its mean)
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.config import Config
from trainer.data import Dataset
from trainer.objectives.base import Objective, Setting, require_examples
from trainer.objectives.logps import answer_logits, sequence_logps, token_logps
from trainer.preferences import load_preference_file
from trainer.tokens import Encoded, collate, encode_all


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


def encode_pairs(tokenizer, data: Dataset, max_seq_len: int) -> list[Pair]:
    """Preference pairs as token ids; a pair whose either answer was truncated away is dropped."""
    pairs = []
    for chosen, rejected in zip(data.conversations, data.rejected, strict=True):
        encoded, dropped = encode_all(tokenizer, [chosen, rejected], max_seq_len)
        if not dropped:
            pairs.append(Pair(*encoded))
    return pairs


@torch.no_grad()
def score_pairs(causal_lm, pairs: list[Pair], pad_id: int, batch_size: int, device, adapter_off: bool = False):
    """(log pi(chosen), log pi(rejected)) per pair, [n] each, in eval mode (no dropout)."""
    was_training = causal_lm.training
    causal_lm.eval()
    chosen, rejected = [], []
    context = causal_lm.disable_adapter() if adapter_off else nullcontext()
    with context:
        for start in range(0, len(pairs), batch_size):
            part = pairs[start : start + batch_size]
            batch = collate([p.chosen for p in part] + [p.rejected for p in part], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logps = sequence_logps(*answer_logits(causal_lm, batch), 2 * len(part))
            chosen.append(logps[: len(part)].cpu())
            rejected.append(logps[len(part) :].cpu())
    causal_lm.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


class DPO(Objective):
    """Sigmoid DPO: chosen and rejected answers go through the model in one batch.

    With `sft_weight` w > 0, each micro-batch also adds w * (mean NLL of its chosen tokens) per pair
    (TRL's loss_type ["sigmoid", "sft"], loss_weights [1, w]): DPO alone may lower the chosen
    answers' likelihood while it widens the margin; the NLL term keeps them likely.
    The reference is the starting point (the base, or lora.init_from's adapter as loaded): its
    log-probs of every pair trained or evaluated are computed once, before the first step.
    """

    name = "dpo"

    def __init__(self, causal_lm, beta: float, sft_weight: float = 0.0):
        super().__init__(causal_lm)
        self.beta = beta
        self.sft_weight = sft_weight

    @classmethod
    def load_file(cls, cfg: Config, path: str) -> Dataset:
        return load_preference_file(path, cfg.data.skip_bad_lines)

    @classmethod
    def encode_train(cls, cfg: Config, tokenizer, data: Dataset) -> list:
        pairs = encode_pairs(tokenizer, data, cfg.data.max_seq_len)  # never packed
        require_examples(cfg, pairs, len(data.conversations) - len(pairs))
        return pairs

    @classmethod
    def encode_eval(cls, cfg: Config, tokenizer, data: Dataset) -> list:
        return encode_pairs(tokenizer, data, cfg.data.max_seq_len) if data.rejected else []

    @classmethod
    def build(cls, causal_lm, setting: Setting) -> DPO:
        return cls(causal_lm, setting.cfg.dpo.beta, setting.cfg.dpo.sft_weight)

    def setup_reference(self, micro_batches: Iterable[list], eval_items: list, setting: Setting) -> None:
        """The starting point's log-probs of every pair that steps 0..max_steps-1 train on, and the eval pairs."""
        seen = {id(p): p for micro in micro_batches for p in micro}
        pairs = list(seen.values()) + eval_items
        if not pairs:
            return
        chosen, rejected = score_pairs(
            self.causal_lm, pairs, setting.pad_id, setting.cfg.eval.batch_size, setting.device,
            setting.reference_adapter_off,
        )  # fmt: skip
        for pair, c, r in zip(pairs, chosen.tolist(), rejected.tolist(), strict=True):
            pair.ref_chosen, pair.ref_rejected = c, r

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

    def eval_metrics(self, eval_items: list, setting: Setting) -> dict[str, float]:
        pairs: list[Pair] = eval_items
        chosen, rejected = score_pairs(
            self.causal_lm, pairs, setting.pad_id, setting.cfg.eval.batch_size, setting.device
        )
        ref_c = torch.tensor([p.ref_chosen for p in pairs])
        ref_r = torch.tensor([p.ref_rejected for p in pairs])
        margins = self.beta * ((chosen - ref_c) - (rejected - ref_r))
        return {
            "preference_accuracy": float((chosen > rejected).float().mean()),
            "reward_accuracy": float((margins > 0).float().mean()),
            "reward_margin": float(margins.mean()),
            "pairs": len(pairs),
        }
