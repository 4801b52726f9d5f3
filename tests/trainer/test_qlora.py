"""QLoRA: the base is loaded as 4-bit NF4 (double quant) and LoRA trains on top of it."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.sample_data import MODELS_DIR
from trainer.config import load_config
from trainer.train import setup, train_step


@pytest.mark.slow
def test_nf4_double_quant_base_trains_lora(tmp_path, tiny_dataset, base_dir):
    import bitsandbytes as bnb

    cfg = load_config(None, [
        "--models_dir", str(MODELS_DIR), "--out_dir", str(tmp_path / "run"),
        "--data.train", str(tiny_dataset), "--data.eval", "null", "--data.max_seq_len", "64",
        "--model.quantization", "nf4", "--lora.target_modules", "all-linear", "--lora.r", "4",
        "--train.batch_size", "1", "--train.lr", "1e-3", "--publish.enabled", "false",
    ])  # fmt: skip
    run = setup(cfg)
    base = run.peft_model.get_base_model()
    q_proj = base.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.base_layer.weight.quant_type == "nf4"
    assert q_proj.base_layer.weight.quant_state.nested  # double quantization
    lora_names = {n for n, p in run.peft_model.named_parameters() if p.requires_grad}
    assert any("mlp.down_proj.lora_A" in n for n in lora_names)  # all-linear reached the MLP
    assert all("lora_" in n for n in lora_names)
    before = {n: p.detach().clone() for n, p in run.peft_model.named_parameters() if p.requires_grad}
    loss, _ = train_step(run, 0)  # one step: 4-bit matmuls on CPU are slow
    assert torch.isfinite(torch.tensor(loss)) and loss > 0
    after = dict(run.peft_model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before if "lora_B" in n)
