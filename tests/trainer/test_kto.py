"""KTO: our loss and its gradient against TRL's own KTO loss code on the same tensors; the KL pairs."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from trainer.objectives.kto import KTO, RatedAnswer, kl_baseline, kto_losses, mismatched
from trainer.objectives.logps import sequence_logps
from trainer.tokens import IGNORE

ROWS, WIDTH, VOCAB = 6, 8, 11
LABELS = torch.tensor([True, False, True, True, False, False])


def trl_kto(per_token, mask, kl_per_token, kl_mask, ref_logps, ref_kl_logps, beta, dw, uw):
    """Run TRL's KTOTrainer._compute_loss (loss_type "kto", precomputed reference log-probs, KL on)
    on per-token log-probs we hand it through a model stand-in; returns (loss, its metrics)."""
    from accelerate import Accelerator
    from trl import KTOTrainer

    def outputs(log_probs):  # what TRL's fused LM head returns
        zeros = torch.zeros(log_probs.shape)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros)

    inputs = {
        "input_ids": torch.zeros(ROWS, WIDTH, dtype=torch.long),
        "attention_mask": torch.ones(ROWS, WIDTH, dtype=torch.long),
        "completion_mask": mask,
        "KL_input_ids": torch.ones(ROWS, WIDTH, dtype=torch.long),
        "KL_attention_mask": torch.ones(ROWS, WIDTH, dtype=torch.long),
        "KL_completion_mask": kl_mask,
        "label": LABELS.tolist(),
        "ref_logps": ref_logps,
        "ref_KL_logps": ref_kl_logps,
    }
    model = lambda input_ids, **_: outputs(kl_per_token if input_ids.sum() else per_token)  # noqa: E731
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=Accelerator(cpu=True), aux_loss_enabled=False,
        calculate_KL=True, precompute_ref_logps=True, loss_type="kto", beta=beta, desirable_weight=dw,
        undesirable_weight=uw, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    trainer._compute_kl_logps = lambda m, batch: KTOTrainer._compute_kl_logps(trainer, m, batch)
    inputs["label"] = torch.tensor(inputs["label"])
    loss = KTOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]


def completion_mask(starts: list[int]) -> torch.Tensor:
    mask = torch.zeros(ROWS, WIDTH, dtype=torch.long)
    for row, start in enumerate(starts):
        mask[row, start:] = 1
    return mask


def per_token_logps(logits: torch.Tensor, token_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(next token) at every position, zero outside the completion: what TRL sums per row."""
    return torch.gather(logits.log_softmax(-1), 2, token_ids[:, 1:, None]).squeeze(2) * mask[:, 1:]


def ours(logits, token_ids, mask, kl_logps, ref_logps, ref_kl_logps, beta, dw, uw):
    """Our path: the LM head's logits only at trained positions, summed per row, then kto_losses."""
    keep = mask[:, 1:].bool()
    rows = torch.arange(ROWS)[:, None].expand(ROWS, WIDTH - 1)[keep]
    logps = sequence_logps(logits[keep], token_ids[:, 1:][keep], rows, ROWS)
    kl = kl_baseline(kl_logps, ref_kl_logps)
    losses, rewards = kto_losses(logps, ref_logps, kl, LABELS, beta, dw, uw)
    return losses.mean(), rewards, kl  # the loop: summed loss / rows of the step


@pytest.mark.parametrize(
    ("beta", "dw", "uw", "kl_shift"), [(0.1, 1.0, 1.0, -1.0), (0.5, 1.33, 0.8, -1.0), (0.3, 1.0, 1.0, 9.0)]
)
def test_kto_loss_and_gradient_match_trl(beta, dw, uw, kl_shift):
    """kl_shift < 0: the KL estimate comes out negative and both clamp it at 0; 9: a positive baseline."""
    torch.manual_seed(0)
    mask, kl_mask = completion_mask([2, 3, 5, 2, 4, 3]), completion_mask([3, 2, 2, 5, 3, 4])
    token_ids, kl_ids = torch.randint(0, VOCAB, (ROWS, WIDTH)), torch.randint(0, VOCAB, (ROWS, WIDTH))
    logits = torch.randn(ROWS, WIDTH - 1, VOCAB)
    kl_per_token = per_token_logps(torch.randn(ROWS, WIDTH - 1, VOCAB), kl_ids, kl_mask)
    ref_logps, ref_kl_logps = torch.randn(ROWS) * 2 - 9, kl_per_token.sum(-1) - kl_shift + torch.randn(ROWS) * 0.1

    trl_logits = logits.clone().requires_grad_(True)
    trl_loss, trl_metrics = trl_kto(
        per_token_logps(trl_logits, token_ids, mask), mask, kl_per_token, kl_mask, ref_logps, ref_kl_logps, beta, dw, uw
    )
    trl_loss.backward()
    our_logits = logits.clone().requires_grad_(True)
    loss, rewards, kl = ours(our_logits, token_ids, mask, kl_per_token.sum(-1), ref_logps, ref_kl_logps, beta, dw, uw)
    loss.backward()

    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-6)
    assert torch.allclose(our_logits.grad, trl_logits.grad, rtol=1e-5, atol=1e-8)
    assert trl_logits.grad.abs().sum() > 0
    assert kl.item() == pytest.approx(trl_metrics["kl"][0], abs=1e-6)
    assert (kl.item() == 0.0) == (kl_shift < 0)  # the clamp is exercised, and so is a real baseline
    assert rewards[LABELS].mean().item() == pytest.approx(trl_metrics["rewards/chosen"][0], rel=1e-5)
    assert rewards[~LABELS].mean().item() == pytest.approx(trl_metrics["rewards/rejected"][0], rel=1e-5)


class TwoBatchLM(torch.nn.Module):
    """Hands fixed logits to answer_logits: one set for the rated rows, one for the KL rows."""

    def __init__(self, logits: torch.Tensor, kl_logits: torch.Tensor):
        super().__init__()
        pad = lambda x: torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)  # noqa: E731  (last position: no target)
        self.by_width = {WIDTH: pad(logits), WIDTH + 1: pad(kl_logits)}
        self.head = torch.nn.Identity()

    def get_decoder(self):
        return lambda input_ids, **_: SimpleNamespace(last_hidden_state=self.by_width[input_ids.shape[1]])

    def get_output_embeddings(self):
        return self.head


def test_kto_module_forward_matches_trl():
    """The module's own forward (the KL rows under no_grad, sums the loop divides by rows) equals TRL's loss."""
    torch.manual_seed(1)
    beta, dw, uw = 0.2, 1.2, 1.0
    mask, kl_mask = completion_mask([2, 3, 5, 2, 4, 3]), completion_mask([3, 2, 2, 5, 3, 4])
    kl_mask = torch.cat([torch.zeros(ROWS, 1, dtype=torch.long), kl_mask], dim=1)  # KL rows one token wider
    token_ids, kl_ids = torch.randint(0, VOCAB, (ROWS, WIDTH)), torch.randint(0, VOCAB, (ROWS, WIDTH + 1))
    logits, kl_logits = torch.randn(ROWS, WIDTH - 1, VOCAB), torch.randn(ROWS, WIDTH, VOCAB)
    kl_per_token = per_token_logps(kl_logits, kl_ids, kl_mask)
    ref_logps, ref_kl_logps = torch.randn(ROWS) - 8, kl_per_token.sum(-1) - 2.0
    trl_loss, _ = trl_kto(
        per_token_logps(logits, token_ids, mask), mask, kl_per_token[:, 1:], kl_mask[:, 1:], ref_logps, ref_kl_logps,
        beta, dw, uw,
    )  # fmt: skip
    batch = {
        "input_ids": token_ids, "labels": token_ids.masked_fill(mask == 0, IGNORE),
        "kl_input_ids": kl_ids, "kl_labels": kl_ids.masked_fill(kl_mask == 0, IGNORE),
        "label": LABELS, "ref_logps": ref_logps, "ref_kl_logps": ref_kl_logps,
    }  # fmt: skip
    loss, metrics = KTO(TwoBatchLM(logits, kl_logits), beta, dw, uw)(batch)
    assert (loss / ROWS).item() == pytest.approx(trl_loss.item(), rel=1e-6)
    assert (metrics["kl"] / ROWS).item() == pytest.approx(2.0, abs=1e-4)  # the baseline: policy - ref on KL rows
    assert set(metrics) == {"kl", "reward_accuracy"}


def rated(index: int, label: bool) -> RatedAnswer:
    return RatedAnswer(index, [100 + index, 200 + index], [300 + index, 2], [300 + index, 2], label, max_seq_len=64)


def test_kl_pairs_rotate_completions_by_one_as_trl_does():
    """TRL: KL_completion_ids = [completion_ids[-1]] + completion_ids[:-1] within each batch."""
    rows = [rated(i, i % 2 == 0) for i in range(4)]
    completions = [r.completion_ids for r in rows]
    trl_kl_completions = [completions[-1]] + completions[:-1]
    pairs = mismatched(rows)
    assert [p.prompt_ids for p, _ in pairs] == [r.prompt_ids for r in rows]
    assert [c.completion_ids for _, c in pairs] == trl_kl_completions
    encoded = pairs[0][0].encoded(pairs[0][1])
    assert encoded.input_ids == [100, 200, 303, 2] and encoded.labels == [IGNORE, IGNORE, 303, 2]


def test_collate_reads_the_reference_of_each_pair():
    kto = KTO(torch.nn.Identity(), beta=0.1)
    rows = [rated(i, i == 0) for i in range(3)]
    for r in rows:
        r.ref_logp = -float(r.index)
    kto.ref_kl = {(p.index, c.index): 10.0 * p.index + c.index for p, c in mismatched(rows)}
    batch = kto.collate(rows, pad_id=0)
    assert batch["ref_kl_logps"].tolist() == [2.0, 10.0, 21.0]  # (0, 2), (1, 0), (2, 1)
    assert batch["ref_logps"].tolist() == [0.0, -1.0, -2.0] and batch["label"].tolist() == [True, False, False]
    assert batch["kl_input_ids"][0].tolist() == [100, 200, 302, 2]
