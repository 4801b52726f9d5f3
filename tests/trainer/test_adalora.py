"""AdaLoRA: the rank budget check, and the plain LoRA it is published as computes the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from trainer.config import load_config
from trainer.errors import ConfigError

IDS = torch.tensor([[1, 504, 3458, 282, 4649, 47, 2, 28, 9021, 30]])


def test_final_rank_above_the_serving_limit_is_refused_before_training():
    from trainer.adalora import check_rank_budget

    cfg = load_config(
        None, ["--lora.method", "adalora", "--lora.adalora.init_r", "24", "--lora.adalora.target_r", "20"]
    )
    with pytest.raises(ConfigError, match="target_r 20 > publish.max_lora_rank 16"):
        check_rank_budget(cfg.lora, 16)
    check_rank_budget(cfg.lora, 20)  # init_r above the limit may still fit: decided at publish


def test_cli_refuses_an_unservable_budget_before_training(tmp_path, capsys):
    from tests.trainer.test_train_cli import demo_args
    from trainer.cli import main

    flags = ["--lora.method", "adalora", "--lora.adalora.init_r", "24", "--lora.adalora.target_r", "20"]
    assert main(demo_args(tmp_path, *flags)) == 2
    assert "target_r 20 > publish.max_lora_rank 16" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_bad_budget_is_a_config_error():
    with pytest.raises(ConfigError, match=r"target_r must be in \[1, init_r=4\], got 6"):
        load_config(None, ["--lora.adalora.init_r", "4", "--lora.adalora.target_r", "6"])


def random_adalora(base_dir, layers=None):  # noqa: ANN001, ANN201
    """An AdaLoRA model on the real base with random triplets, a third of them pruned (E = 0)
    unevenly, so the conversion has to pad modules to the largest kept rank."""
    from transformers import AutoModelForCausalLM

    from trainer.adalora import _svd_layers
    from trainer.model import add_lora

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float64)
    overrides = ["--lora.method", "adalora", "--lora.target_modules", "[q_proj, v_proj]"]
    overrides += ["--lora.adalora.init_r", "6", "--lora.adalora.target_r", "4"]
    cfg = load_config(None, overrides + (["--lora.layers", layers] if layers else []))
    peft_model = add_lora(model, cfg.lora, "smollm2-135m-instruct", max_steps=10)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, (_, layer) in enumerate(_svd_layers(peft_model)):
            for p in (layer.lora_A["default"], layer.lora_B["default"], layer.lora_E["default"]):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            layer.lora_E["default"][: i % 4] = 0.0  # 0..3 of 6 triplets pruned
    return peft_model.eval()


@pytest.mark.slow
def test_converted_adapter_gives_the_adalora_models_logits(base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.adalora import save_adapter
    from trainer.publish import servability_problems

    adalora = random_adalora(base_dir)
    with torch.no_grad():
        want = adalora(input_ids=IDS).logits
        with adalora.disable_adapter():
            base = adalora(input_ids=IDS).logits
    save_adapter(adalora, tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 6, 6)  # one module kept all 6
    assert not servability_problems(config, 16)
    plain = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float64), tmp_path / "lora"
    )
    with torch.no_grad():
        got = plain(input_ids=IDS).logits
    assert (want - base).abs().max() > 1.0  # the adapter changes the logits a lot, so equality means something
    # float64 compute: what remains is the published tensors' float32 storage (measured 1.4e-5)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_adalora_on_some_layers_trains_prunes_and_publishes_plain_lora(tmp_path, base_dir):
    """The real CLI, 4 steps: budget pruned in steps 1-3, published as LoRA on layers 26-29 only,
    and the generation metrics in summary.json are those of its own replies."""
    from safetensors import safe_open

    from tests.trainer.test_train_cli import demo_args, heldout_subset
    from trainer.cli import main
    from trainer.evaluation.metrics import score

    metrics = ["exact_match", "json_valid", "rouge_l", "bleu"]
    args = demo_args(
        tmp_path, "--lora.method", "adalora", "--lora.layers", "26-29", "--lora.adalora.init_r", "6",
        "--lora.adalora.target_r", "2", "--lora.adalora.tinit_ratio", "0.25", "--lora.adalora.tfinal_ratio", "0.25",
        "--train.max_steps", "4", "--train.batch_size", "2", "--train.lr", "5e-3", "--data.max_seq_len", "96",
        "--data.eval", str(heldout_subset(tmp_path, 3)), "--eval.max_new_tokens", "24",
        "--eval.metrics", f"[{', '.join(metrics)}]",
    )  # fmt: skip
    assert main(args) == 0
    version = tmp_path / "adapters" / "test-adapter" / "v1"
    config = json.loads((version / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["layers_to_transform"] == [26, 27, 28, 29]
    assert 1 <= config["r"] <= 6 and config["lora_alpha"] == config["r"]
    with safe_open(version / "adapter_model.safetensors", "pt") as f:
        layers = {int(k.split(".layers.")[1].split(".")[0]) for k in f.keys()}  # noqa: SIM118
    assert layers == {26, 27, 28, 29}
    pattern = json.loads((tmp_path / "run" / "adapter" / "adalora.json").read_text())["rank_pattern"]
    kept = [sum(mask) for mask in pattern.values()]
    assert max(kept) == config["r"] and sum(kept) < 6 * len(kept)  # pruned, and R is the largest kept rank
    manifest = json.loads((version / "loraplane-adapter.json").read_text())
    assert manifest["lora"]["r"] == config["r"]

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval_replies.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and list(summary["eval"]["metrics"]) == metrics
    assert summary["eval"]["metrics"] == score([r["reply"] for r in rows], [r["reference"] for r in rows], metrics)


def tiny_adalora(orth_reg_weight: str = "0.5"):  # noqa: ANN201
    """PEFT AdaLoRA on a 2-layer random Llama (the regulariser depends only on the adapter)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.adalora import _svd_layers
    from trainer.model import add_lora

    torch.manual_seed(0)
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2}
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, num_hidden_layers=2, **shape)).double()
    overrides = ["--lora.method", "adalora", "--lora.dropout", "0", "--lora.adalora.init_r", "6"]
    overrides += ["--lora.adalora.target_r", "4", "--lora.adalora.orth_reg_weight", orth_reg_weight]
    peft_model = add_lora(model, load_config(None, overrides).lora, "tiny", max_steps=10)
    with torch.no_grad():  # E != 0, so the cross-entropy's gradient reaches A and B too
        for _, layer in _svd_layers(peft_model):
            layer.lora_E["default"].normal_(0, 0.5)
            layer.lora_A["default"].normal_(0, 0.3)
    return peft_model


def adapter_grads(peft_model) -> dict[str, torch.Tensor]:
    trained = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in trained}
    peft_model.zero_grad(set_to_none=True)
    return grads


def test_orth_reg_term_is_what_peft_adds_to_the_loss():
    """PEFT's own AdaLoraModel.forward with labels is the reference: its loss minus the same
    forward with orth_reg_weight 0 is our term, in value and in gradient."""
    from trainer.adalora import orth_reg_term

    peft_model = tiny_adalora()
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with_reg = peft_model(input_ids=ids, labels=ids).loss  # PEFT: mean CE + 0.5 * its regulariser
    with_reg.backward()
    want = adapter_grads(peft_model)

    peft_model.peft_config["default"].orth_reg_weight = 0.0
    plain = peft_model(input_ids=ids, labels=ids).loss
    assert orth_reg_term(peft_model) is None  # weight 0: nothing added
    plain.backward()
    without = adapter_grads(peft_model)
    peft_model.peft_config["default"].orth_reg_weight = 0.5
    ours = orth_reg_term(peft_model)

    added = float(with_reg.detach() - plain.detach())
    assert added > 0.1  # the term is large enough to matter
    assert float(ours.detach()) == pytest.approx(added, rel=1e-6)  # HF's loss is float32 (PEFT adds ours to it)
    (plain.detach() + ours).backward()  # ours alone; plain's gradient is in `without`
    got = adapter_grads(peft_model)
    for name, grad in want.items():
        torch.testing.assert_close(without[name] + got[name], grad, rtol=1e-9, atol=1e-12)
    assert max(float((want[n] - without[n]).norm() / want[n].norm()) for n in want if "lora_A" in n) > 0.01


def test_orth_reg_term_is_none_for_plain_lora():
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.adalora import orth_reg_term
    from trainer.model import add_lora

    shape = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2}
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, num_hidden_layers=2, **shape))
    assert orth_reg_term(add_lora(model, load_config(None, ["--lora.r", "4"]).lora, "tiny")) is None


def test_negative_orth_reg_weight_is_a_config_error():
    with pytest.raises(ConfigError, match="orth_reg_weight must be >= 0 .*got -0.1"):
        load_config(None, ["--lora.adalora.orth_reg_weight", "-0.1"])


@pytest.mark.slow
def test_the_loop_adds_the_orth_reg_once_per_step_as_peft_does(tmp_path, tiny_dataset):
    """Two micro-batches of 2: our step's gradient equals that of PEFT's own loss (AdaLoraModel.forward
    with labels: mean CE over the 4 sequences + 0.5 * its regulariser) on one batch of all 4.
    At init E = 0, so A and B get gradient from the regulariser alone: once per micro-batch, or
    scaled by the token count, would be off by 2x or more."""
    from tests.trainer.sample_data import MODELS_DIR
    from tests.trainer.test_grad_accum import relative_error
    from trainer.tokens import collate
    from trainer.train import accumulate_gradients, setup

    cfg = load_config(None, [
        "--models_dir", str(MODELS_DIR), "--out_dir", str(tmp_path / "run"), "--publish.enabled", "false",
        "--data.train", str(tiny_dataset), "--data.eval", "null", "--data.max_seq_len", "64",
        "--lora.method", "adalora", "--lora.dropout", "0", "--lora.target_modules", "[q_proj, v_proj]",
        "--lora.adalora.init_r", "4", "--lora.adalora.target_r", "2", "--lora.layers", "24-29",
        "--train.batch_size", "2", "--train.grad_accum", "2", "--train.length_grouping", "false",
        "--model.precision", "fp32",  # PEFT's forward below runs outside our autocast: same dtype for both
    ])  # fmt: skip
    run = setup(cfg)
    loss_sum, metrics, trained, _ = accumulate_gradients(run, step=0)
    got = adapter_grads(run.peft_model)
    micro = run.batches.for_step(0)[0]
    assert len(micro) == 2 and metrics["orth_reg"] / trained > 0.1

    batch = collate([e for m in micro for e in m], run.tokenizer.pad_token_id)
    peft_loss = run.peft_model(**batch).loss  # labels in the batch: PEFT adds its regulariser
    peft_loss.backward()
    want = adapter_grads(run.peft_model)
    reg = float(peft_loss.detach()) - float(loss_sum) / trained
    assert float(metrics["orth_reg"]) / trained == pytest.approx(reg, rel=1e-4)  # train/orth_reg
    assert all(grad.norm() > 0 for grad in want.values())
    # fp32 CE sums over other padding differ ~1e-5 relative (E's gradient); a 2x term is off by ~1
    assert relative_error(got, want) < 1e-3


def phase(state) -> str:  # noqa: ANN001
    if state.rank_pattern is None:
        return "before pruning"
    return "pruning" if state.exp_avg_ipt else "final ranks"


def test_allocator_state_round_trips_through_its_file_at_every_phase(tmp_path):
    """Before pruning (no pattern), mid-pruning (statistics + pattern), after the final allocation
    (pattern only): saved and loaded into a fresh model, the next budget update acts the same."""
    from trainer import adalora

    live = tiny_adalora()  # 10 steps: tinit 1, pruning in steps 2-7, final allocation at step 8
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    phases = []
    for step in range(10):
        fresh = tiny_adalora()
        adalora.save_allocator(live, tmp_path / "allocator.safetensors")
        adalora.load_checkpoint_weights(fresh, adalora.checkpoint_weights(live))
        adalora.load_allocator(fresh, tmp_path / "allocator.safetensors")
        phases.append(phase(adalora.AllocatorState.of(live)))
        for model in (live, fresh):
            model(input_ids=ids, labels=ids).loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p -= 0.05 * p.grad
            model.base_model.update_and_allocate(step)
            model.zero_grad(set_to_none=True)
        assert adalora.AllocatorState.of(fresh).rank_pattern == adalora.AllocatorState.of(live).rank_pattern, step
        want = adalora.checkpoint_weights(live)
        for name, tensor in adalora.checkpoint_weights(fresh).items():
            torch.testing.assert_close(tensor, want[name], rtol=0, atol=0, msg=f"step {step}: {name}")
    assert phases == ["before pruning"] * 3 + ["pruning"] * 6 + ["final ranks"]


def test_a_checkpoint_without_allocator_state_is_refused(tmp_path):
    from trainer.adalora import load_allocator
    from trainer.errors import TrainerError

    with pytest.raises(TrainerError, match="no rank allocator state; start a fresh out_dir"):
        load_allocator(tiny_adalora(), tmp_path / "missing.safetensors")
