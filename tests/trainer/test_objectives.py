"""Loss modules: DPO against TRL's own loss code, the distillation KL against F.kl_div, w=0 == SFT."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from trainer.objectives import SFT, Distill, answer_logits, distill_kl, dpo_losses, sequence_logps
from trainer.tokens import IGNORE


def trl_sigmoid_dpo(per_token_logps, completion_mask, ref_chosen, ref_rejected, beta: float, sft_weight: float = 0.0):
    """Run TRL's DPOTrainer._compute_loss on per-token log-probs we hand it (through a model stand-in);
    sft_weight > 0: TRL's loss_type ["sigmoid", "sft"] with loss_weights [1, sft_weight]."""
    from accelerate import Accelerator
    from trl import DPOTrainer

    rows, width = completion_mask.shape
    outputs = SimpleNamespace(  # what TRL's fused LM head returns, built from our log-probs
        log_probs=per_token_logps,
        entropy=torch.zeros(rows, width - 1),
        mean_logits=torch.zeros(rows, width - 1),
        is_top1=torch.zeros(rows, width - 1, dtype=torch.bool),
    )
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=Accelerator(cpu=True), aux_loss_enabled=False,
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=["sigmoid", "sft"] if sft_weight else ["sigmoid"],
        loss_weights=[1.0, sft_weight] if sft_weight else [1.0], beta=beta, use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {
        "input_ids": torch.zeros(rows, width, dtype=torch.long),
        "attention_mask": torch.ones(rows, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = DPOTrainer._compute_loss(trainer, lambda **_: outputs, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]


PAIRS = 3


def dpo_batch():
    """Random logits over a small vocab for 3 pairs (rows: all chosen, then all rejected: TRL's order
    and ours), completion masks of different lengths, and per-token log-probs of the targets."""
    torch.manual_seed(0)
    width, vocab, rows = 7, 11, 2 * PAIRS
    completion_mask = torch.zeros(rows, width, dtype=torch.long)
    for r, start in enumerate([2, 3, 4, 2, 5, 3]):
        completion_mask[r, start:] = 1
    logits = torch.randn(rows, width - 1, vocab)
    token_ids = torch.randint(0, vocab, (rows, width))
    # per-token log p(next token), masked to the completion: what both implementations sum
    per_token = torch.gather(logits.log_softmax(-1), 2, token_ids[:, 1:, None]).squeeze(2)
    per_token = per_token * completion_mask[:, 1:]
    ref_chosen, ref_rejected = torch.randn(PAIRS) - 5, torch.randn(PAIRS) - 5
    return completion_mask, logits, token_ids, per_token, ref_chosen, ref_rejected


def test_dpo_loss_matches_trl():
    pairs, rows, beta = PAIRS, 2 * PAIRS, 0.3
    completion_mask, logits, token_ids, per_token, ref_chosen, ref_rejected = dpo_batch()
    width = completion_mask.shape[1]

    trl_loss, trl_metrics = trl_sigmoid_dpo(per_token, completion_mask, ref_chosen, ref_rejected, beta)

    keep = completion_mask[:, 1:].bool()  # ours: logits only at trained positions, summed per row
    row_of = torch.arange(rows)[:, None].expand(rows, width - 1)[keep]
    logps = sequence_logps(logits[keep], token_ids[:, 1:][keep], row_of, rows)
    losses, margins = dpo_losses(logps[:pairs], logps[pairs:], ref_chosen, ref_rejected, beta)
    assert losses.mean().item() == pytest.approx(trl_loss.item(), rel=1e-6)
    assert margins.mean().item() == pytest.approx(trl_metrics["rewards/margins"][0], rel=1e-5)
    assert (margins > 0).float().mean().item() == pytest.approx(trl_metrics["rewards/accuracies"][0])
    assert trl_loss.item() != pytest.approx(float(torch.log(torch.tensor(2.0))))  # not the margin-0 value


class LogitsLM(torch.nn.Module):
    """Hands fixed logits to answer_logits: a decoder returning them as hidden states, identity head."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        padded = torch.cat([logits, torch.zeros_like(logits[:, :1])], dim=1)  # the last position has no target
        self.decoder = lambda **_: SimpleNamespace(last_hidden_state=padded)
        self.head = torch.nn.Identity()

    def get_decoder(self):
        return self.decoder

    def get_output_embeddings(self):
        return self.head


def test_dpo_with_sft_weight_matches_trl_sigmoid_plus_sft():
    """dpo.sft_weight w == TRL loss_type ["sigmoid", "sft"], loss_weights [1, w], through our DPO module."""
    from trainer.objectives import DPO

    beta, w = 0.3, 0.7
    completion_mask, logits, token_ids, per_token, ref_chosen, ref_rejected = dpo_batch()
    trl_loss, trl_metrics = trl_sigmoid_dpo(per_token, completion_mask, ref_chosen, ref_rejected, beta, w)
    trl_plain, _ = trl_sigmoid_dpo(per_token, completion_mask, ref_chosen, ref_rejected, beta)
    labels = token_ids.masked_fill(completion_mask == 0, IGNORE)
    batch = {"input_ids": token_ids, "labels": labels, "ref_chosen": ref_chosen, "ref_rejected": ref_rejected}
    loss, metrics = DPO(LogitsLM(logits), beta, sft_weight=w)(batch)
    assert (loss / PAIRS).item() == pytest.approx(trl_loss.item(), rel=1e-6)  # the loop divides by pairs
    assert trl_loss.item() > trl_plain.item() + 0.1  # the sft term is really in both
    plain, _ = DPO(LogitsLM(logits), beta)(batch)
    assert (plain / PAIRS).item() == pytest.approx(trl_plain.item(), rel=1e-6)
    assert set(metrics) == {"reward_margin", "reward_accuracy", "chosen_nll"}


def test_distill_kl_matches_kl_div():
    torch.manual_seed(1)
    student, teacher, t = torch.randn(9, 50), torch.randn(9, 50) * 2, 2.5
    expected = F.kl_div((student / t).log_softmax(-1), (teacher / t).log_softmax(-1), reduction="sum", log_target=True)
    assert distill_kl(student, teacher, t).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distill_kl(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-5)


class TinyLM(torch.nn.Module):
    """A causal LM of the shape answer_logits expects: get_decoder() and get_output_embeddings()."""

    def __init__(self, vocab: int = 13, hidden: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)

    def get_decoder(self):
        def decoder(input_ids, attention_mask=None, position_ids=None, use_cache=False):
            hidden = self.embed(input_ids).cumsum(1)  # causal: position t sees tokens <= t
            return SimpleNamespace(last_hidden_state=hidden)

        return decoder

    def get_output_embeddings(self):
        return self.head


class LogitsTeacher:
    def __init__(self, model):
        self.model = model

    def logits(self, batch):
        return answer_logits(self.model, batch)[0]


def tiny_batch():
    input_ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]])
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, 5], [IGNORE, 7, 8, IGNORE, IGNORE]])
    return {"input_ids": input_ids, "labels": labels, "attention_mask": (labels != -1).long()}


def test_distill_with_zero_kl_weight_is_the_sft_loss():
    student, batch = TinyLM(seed=0), tiny_batch()
    sft_loss, _ = SFT(student)(batch)
    distill_loss, metrics = Distill(student, LogitsTeacher(TinyLM(seed=1)), kl_weight=0.0, temperature=2.0)(batch)
    assert torch.equal(distill_loss, sft_loss)
    assert metrics["ce"] == sft_loss


def test_distill_loss_mixes_ce_and_scaled_kl():
    student, teacher, batch = TinyLM(seed=0), TinyLM(seed=1), tiny_batch()
    w, t = 0.25, 2.0
    loss, metrics = Distill(student, LogitsTeacher(teacher), kl_weight=w, temperature=t)(batch)
    s_logits, targets, _ = answer_logits(student, batch)
    t_logits = answer_logits(teacher, batch)[0]
    assert s_logits.shape[0] == 5  # only the 5 trained positions (3 + 2)
    ce = F.cross_entropy(s_logits, targets, reduction="sum")
    kl = F.kl_div((s_logits / t).log_softmax(-1), (t_logits / t).log_softmax(-1), reduction="sum", log_target=True)
    assert loss.item() == pytest.approx(((1 - w) * ce + w * t * t * kl).item(), rel=1e-5)
    assert metrics["kl"].item() > 0
    loss.backward()
    assert student.head.weight.grad is not None and teacher.head.weight.grad is None  # teacher: no_grad
