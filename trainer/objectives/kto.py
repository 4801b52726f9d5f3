"""train.method kto: Kahneman-Tversky Optimization (Ethayarajh et al. 2024) on rated, unpaired answers.

Each row is one answer with a thumbs-up (label true: desirable) or a thumbs-down (false). With
r = log pi(y|x) - log pi_ref(y|x) (the implied reward is beta * r) and z0 the KL baseline:

    desirable row:    desirable_weight   * (1 - sigmoid(beta * (r - z0)))
    undesirable row:  undesirable_weight * (1 - sigmoid(beta * (z0 - r)))

and the loss is the mean over rows (TRL's KTOTrainer, loss_type "kto"). z0 is estimated as TRL
does: each micro-batch's prompts are paired with its completions rotated by one (x_i with
y_{i-1}); z0 = mean of log pi - log pi_ref over those mismatched pairs, averaged over processes,
detached and clamped at 0. The reference is the starting point (the base, or lora.init_from's
adapter as loaded): its log-probs of every row and every mismatched pair that steps
0..max_steps-1 will see are computed once, before the first step.

Eval: a rated eval file gives reward accuracy (the implied reward's sign agrees with the label)
and its desirable rows the eval loss and exact match; a chat file (a golden set) gives those two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.config import Config
from trainer.data import Dataset, Messages, split_validation
from trainer.objectives.base import Objective, Setting, require_examples
from trainer.objectives.logps import answer_logits, score_sequences, sequence_logps
from trainer.preferences import is_rated_file, load_rated_file
from trainer.tokens import IGNORE, Encoded, collate, encode_completion


@dataclass
class RatedAnswer:
    """One rated row, encoded as prompt and completion (so prompts and completions can be re-paired)."""

    index: int  # row in its file: with the completion's row, the key of a mismatched pair's reference
    prompt_ids: list[int]
    completion_ids: list[int]
    completion_labels: list[int]  # IGNORE after the answer's EOS
    label: bool  # True: desirable
    max_seq_len: int
    ref_logp: float = 0.0  # log pi_ref(completion | prompt), set once before training

    def encoded(self, completion_of: RatedAnswer | None = None) -> Encoded:
        """This prompt with its own completion, or with `completion_of`'s (a mismatched pair)."""
        other = completion_of or self
        ids = self.prompt_ids + other.completion_ids
        labels = [IGNORE] * len(self.prompt_ids) + other.completion_labels
        return Encoded(ids[: self.max_seq_len], labels[: self.max_seq_len])

    @property
    def input_ids(self) -> list[int]:  # for length grouping and token counts
        return (self.prompt_ids + self.completion_ids)[: self.max_seq_len]

    @property
    def n_trained(self) -> int:  # the kto loss is a mean over rows: each row weighs 1
        return 1


def encode_rated(tokenizer, data: Dataset, max_seq_len: int) -> list[RatedAnswer]:
    """Rated rows as token ids; a row whose completion was truncated away is dropped."""
    rows = []
    for index, (messages, label) in enumerate(zip(data.conversations, data.labels, strict=True)):
        row = RatedAnswer(index, *encode_completion(tokenizer, messages), label, max_seq_len)
        if row.encoded().n_trained:
            rows.append(row)
    return rows


def mismatched(rows: list[RatedAnswer]) -> list[tuple[RatedAnswer, RatedAnswer]]:
    """TRL's KL pairs: row i's prompt with row i-1's completion (row 0 takes the last row's)."""
    return [(row, rows[i - 1]) for i, row in enumerate(rows)]


def kl_baseline(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """z0: mean of log pi - log pi_ref over the mismatched pairs, averaged over processes, detached, >= 0."""
    kl = (kl_logps - ref_kl_logps).mean().detach()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(kl)  # TRL gathers every process's estimate and takes the mean
        kl = kl / dist.get_world_size()
    return kl.clamp(min=0)


def kto_losses(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    kl: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted loss per row, implied reward beta * r per row); labels: bool, True = desirable."""
    logratios = logps - ref_logps
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    return torch.where(labels, desirable, undesirable), beta * logratios.detach()


class KTO(Objective):
    """KTO on rated rows; each micro-batch also scores its mismatched pairs (no grad) for z0."""

    name = "kto"

    def __init__(self, causal_lm, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
        super().__init__(causal_lm)
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight
        self.ref_kl: dict[tuple[int, int], float] = {}  # (prompt row, completion row) -> log pi_ref

    @classmethod
    def load_data(cls, cfg: Config) -> tuple[Dataset, Dataset | None]:
        train = load_rated_file(cfg.data.train, cfg.data.skip_bad_lines)
        if cfg.data.eval is None:
            return split_validation(train, cfg.data.val_ratio, cfg.data.seed) if cfg.data.val_ratio else (train, None)
        if is_rated_file(cfg.data.eval):
            return train, load_rated_file(cfg.data.eval, cfg.data.skip_bad_lines)
        return train, super().load_file(cfg, cfg.data.eval)  # a golden set in any chat format

    @classmethod
    def encode_train(cls, cfg: Config, tokenizer, data: Dataset) -> list:
        rows = encode_rated(tokenizer, data, cfg.data.max_seq_len)  # never packed
        require_examples(cfg, rows, len(data.conversations) - len(rows))
        return rows

    @classmethod
    def encode_eval(cls, cfg: Config, tokenizer, data: Dataset) -> list:
        return encode_rated(tokenizer, data, cfg.data.max_seq_len) if data.labels else []

    @classmethod
    def eval_conversations(cls, data: Dataset) -> list[Messages]:
        if not data.labels:
            return data.conversations
        return [c for c, good in zip(data.conversations, data.labels, strict=True) if good]

    @classmethod
    def build(cls, causal_lm, setting: Setting) -> KTO:
        kto = setting.cfg.kto
        return cls(causal_lm, kto.beta, kto.desirable_weight, kto.undesirable_weight)

    def setup_reference(self, micro_batches: Iterable[list], eval_items: list, setting: Setting) -> None:
        rows: dict[int, RatedAnswer] = {}
        pairs: dict[tuple[int, int], tuple[RatedAnswer, RatedAnswer]] = {}
        for micro in micro_batches:
            rows |= {id(r): r for r in micro}
            pairs |= {(p.index, c.index): (p, c) for p, c in mismatched(micro)}
        everyone = list(rows.values()) + eval_items
        score = lambda seqs: score_sequences(  # noqa: E731
            self.causal_lm, seqs, setting.pad_id, setting.cfg.eval.batch_size, setting.device,
            setting.reference_adapter_off,
        ).tolist()  # fmt: skip
        for row, logp in zip(everyone, score([r.encoded() for r in everyone]), strict=True):
            row.ref_logp = logp
        self.ref_kl = dict(zip(pairs, score([p.encoded(c) for p, c in pairs.values()]), strict=True))

    def collate(self, rows: list[RatedAnswer], pad_id: int) -> dict[str, torch.Tensor]:
        pairs = mismatched(rows)
        batch = collate([r.encoded() for r in rows], pad_id)
        batch |= {f"kl_{k}": v for k, v in collate([p.encoded(c) for p, c in pairs], pad_id).items()}
        batch["label"] = torch.tensor([r.label for r in rows], dtype=torch.bool)
        batch["ref_logps"] = torch.tensor([r.ref_logp for r in rows], dtype=torch.float32)
        batch["ref_kl_logps"] = torch.tensor([self.ref_kl[(p.index, c.index)] for p, c in pairs], dtype=torch.float32)
        return batch

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = batch["label"].shape[0]
        with torch.no_grad():
            kl_batch = {k.removeprefix("kl_"): v for k, v in batch.items() if k.startswith("kl_")}
            kl_logps = sequence_logps(*answer_logits(self.causal_lm, kl_batch), n)
        logps = sequence_logps(*answer_logits(self.causal_lm, batch), n)
        kl = kl_baseline(kl_logps, batch["ref_kl_logps"])
        losses, rewards = kto_losses(
            logps, batch["ref_logps"], kl, batch["label"], self.beta, self.desirable_weight, self.undesirable_weight
        )
        agree = (rewards > 0) == batch["label"]
        return losses.sum(), {"kl": kl * n, "reward_accuracy": agree.float().sum()}  # sums: the loop divides by rows

    def eval_metrics(self, eval_items: list, setting: Setting) -> dict[str, float]:
        rows: list[RatedAnswer] = eval_items
        logps = score_sequences(
            self.causal_lm, [r.encoded() for r in rows], setting.pad_id, setting.cfg.eval.batch_size, setting.device
        )
        rewards = self.beta * (logps - torch.tensor([r.ref_logp for r in rows]))
        labels = torch.tensor([r.label for r in rows], dtype=torch.bool)
        out = {"reward_accuracy": float(((rewards > 0) == labels).float().mean()), "rows": len(rows)}
        if labels.any():
            out["reward_desirable"] = float(rewards[labels].mean())
        if not labels.all():
            out["reward_undesirable"] = float(rewards[~labels].mean())
        return out
