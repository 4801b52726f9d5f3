"""Packed rows train like separate rows: no attention (and no loss) across packed examples."""

from __future__ import annotations

import pytest
import torch

from trainer.evaluation.scoring import CausalLMLoss
from trainer.tokens import collate, encode, pack


@pytest.mark.slow
def test_packed_loss_equals_separate_losses(base_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    loss_fn = CausalLMLoss(model)
    conversations = [
        [{"role": "user", "content": f"Say {word}."}, {"role": "assistant", "content": word}]
        for word in ("alpha", "a much longer answer with several words", "gamma")
    ]
    examples = [encode(tokenizer, c, max_seq_len=256) for c in conversations]
    rows = pack(examples, max_seq_len=256, seed=0)
    assert len(rows) == 1  # all three share one row
    with torch.no_grad():
        packed_loss, packed_n = loss_fn(collate(rows, tokenizer.pad_token_id))
        separate = [loss_fn(collate([e], tokenizer.pad_token_id)) for e in examples]
        # the same row without position ids (plain causal attention over the whole row) differs
        leaky = loss_fn({k: v for k, v in collate(rows, tokenizer.pad_token_id).items() if k != "position_ids"})
    assert int(packed_n) == sum(int(n) for _, n in separate)
    expected = sum(float(loss) for loss, _ in separate)
    assert float(packed_loss) == pytest.approx(expected, rel=1e-4)
    assert abs(float(leaky[0]) - expected) > 1e-3 * expected
