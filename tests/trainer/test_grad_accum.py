"""Gradient accumulation = one big batch: the loss is normalised by all trained tokens of the step.

The classic bug (mean of per-micro-batch means) weights tokens of short micro-batches more; the
tiny dataset's answers differ in length, so that bug would change the gradient measurably.
"""

from __future__ import annotations

import pytest
import torch

from tests.trainer.sample_data import MODELS_DIR
from trainer.config import load_config
from trainer.tokens import collate
from trainer.train import accumulate_gradients, setup


def make_run(tmp_path, dataset, batch_size: int, grad_accum: int):
    cfg = load_config(None, [
        "--models_dir", str(MODELS_DIR), "--out_dir", str(tmp_path / f"run{batch_size}"),
        "--data.train", str(dataset), "--data.eval", "null", "--data.max_seq_len", "64",
        "--lora.dropout", "0", "--lora.r", "4", "--publish.enabled", "false",
        "--train.batch_size", str(batch_size), "--train.grad_accum", str(grad_accum),
        "--train.length_grouping", "false",
        "--model.precision", "fp32",  # the loss normalisation to 1e-3; bf16 rounding alone is ~3e-3 here
    ])  # fmt: skip
    return setup(cfg)


def lora_grads(run) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in run.peft_model.named_parameters() if p.requires_grad}


@pytest.mark.slow
def test_grad_accum_matches_one_big_batch(tmp_path, tiny_dataset):
    big = make_run(tmp_path, tiny_dataset, batch_size=4, grad_accum=1)
    accumulate_gradients(big, step=0)
    expected = lora_grads(big)

    accum = make_run(tmp_path, tiny_dataset, batch_size=2, grad_accum=2)
    micro, trained, _ = accum.batches.for_step(0)
    assert [e.input_ids for m in micro for e in m] == [e.input_ids for e in big.batches.for_step(0)[0][0]]
    counts = [sum(e.n_trained for e in m) for m in micro]
    assert counts[0] != counts[1], "the test needs micro-batches with different token counts"
    accumulate_gradients(accum, step=0)
    got = lora_grads(accum)
    assert any(g.abs().sum() > 0 for g in expected.values())
    # fp32 sums in a different order (other padding/shapes) differ ~1e-6 relative; the bug is ~1e-1
    assert relative_error(got, expected) < 1e-3

    # the mean-of-means normalisation gives a measurably different gradient (the test can fail)
    accum.optimizer.zero_grad(set_to_none=True)
    for m in micro:
        loss, _ = accum.model(collate(m, accum.tokenizer.pad_token_id))
        (loss / sum(e.n_trained for e in m) / len(micro)).backward()
    assert relative_error(lora_grads(accum), expected) > 1e-2


def relative_error(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    """max over tensors with a gradient of |got - expected| / |expected| (Frobenius norms)."""
    return max(float((got[k] - v).norm() / v.norm()) for k, v in expected.items() if v.norm() > 0)
