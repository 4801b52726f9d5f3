"""train.method dpo / distill and lora.init_from, end to end with `loraplane train` on the real base.

One small SFT adapter (session fixture) is the starting point of DPO and the teacher of distillation.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.cpu_kind import cpu_kind
from tests.trainer.sample_data import MODELS_DIR, REPO
from trainer.cli import main

NAME = "methods-test"


def head(tmp: Path, source: str, n: int) -> Path:
    path = tmp / Path(source).name
    path.write_text("\n".join((REPO / source).read_text().splitlines()[:n]) + "\n")
    return path


def args(out: Path, adapters: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "configs/train/demo.yaml"), "--models_dir", str(MODELS_DIR),
        "--out_dir", str(out), "--publish.adapters_dir", str(adapters), "--publish.name", NAME,
        "--data.max_seq_len", "96", "--train.batch_size", "2", "--train.max_steps", "2",
        "--train.warmup_ratio", "0", "--eval.exact_match", "false", "--lora.dropout", "0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def sft_adapter(tmp_path_factory, base_dir) -> Path:
    """adapters/methods-test/v1: rank 4, a few SFT steps on the demo task."""
    tmp = tmp_path_factory.mktemp("sft")
    train, heldout = head(tmp, "data/demo/train.jsonl", 16), head(tmp, "data/demo/heldout.jsonl", 4)
    flags = ["--data.train", str(train), "--data.eval", str(heldout), "--lora.r", "4", "--publish.version", "v1"]
    assert main(args(tmp / "run", tmp / "adapters", *flags, "--train.max_steps", "3", "--train.lr", "1e-3")) == 0
    return tmp / "adapters" / NAME / "v1"


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# The step-1 margin is beta * mean over the step's 2 pairs of (c - c_ref) - (r - r_ref), c and r the
# log-probs of the chosen and the rejected answer: policy (the step's batch, bf16 autocast) and
# reference (one eval batch of every pair, LoRA branch in fp32) are the same weights, rounded
# elsewhere (kernels differ by batch shape and CPU kind). A confident token's log-prob,
# ~ -sum_j exp(z_j - z_t), moves by the relative amount its logit gaps move, and a bf16 logit
# (8 significant bits, |z| < 32) by up to 2^-8 * 32 = 1/8: an answer's log-prob by up to 1/8 of
# itself (measured: 6%, 1.340 vs 1.422 nats). Chosen and rejected differ only in the person's name,
# so in (c - c_ref) - (r - r_ref) that cancels except on what differs, |c - r|: 7.5 nats and 0 for the
# two step-1 pairs (measured). beta 0.1 x 1/8 x 3.75 = 0.047. Measured: 0.0008 on AMD EPYC with
# AVX512-BF16, 0.0014 on a Xeon with AMX; the bare base as reference (the bug) gives 0.175.
STEP1_MARGIN_TOL = 0.05


@pytest.mark.slow
def test_dpo_continues_an_adapter_against_it_as_reference(tmp_path, sft_adapter):
    pairs = head(tmp_path, "data/demo/preferences-train.jsonl", 8)
    eval_pairs = head(tmp_path, "data/demo/preferences-heldout.jsonl", 4)
    out, adapters = tmp_path / "dpo", sft_adapter.parents[1]
    flags = ["--train.method", "dpo", "--data.train", str(pairs), "--data.eval", str(eval_pairs)]
    flags += ["--lora.init_from", f"{NAME}@v1", "--publish.version", "v2", "--train.lr", "1e-3"]
    assert main(args(out, adapters, *flags)) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "dpo" and summary["eval"]["pairs"] == 4
    assert 0.0 <= summary["eval"]["preference_accuracy"] <= 1.0 and "reward_margin" in summary["eval"]
    logged = {m["step"]: m for m in metrics(out) if "train/loss" in m}
    # the reference is the init_from adapter as loaded: at step 1 the policy equals it (dropout 0),
    # so the margin is 0 and the loss log(2) up to rounding; against the bare base it would not be
    margin = logged[1]["train/reward_margin"]
    print(f"\nnumerics: DPO margin at step 1 {margin:.5f} (bound {STEP1_MARGIN_TOL}; {cpu_kind().describe()})")
    assert abs(margin) <= STEP1_MARGIN_TOL
    assert logged[1]["train/loss"] == pytest.approx(math.log(2), abs=STEP1_MARGIN_TOL / 2)  # -log sigmoid(m)
    assert logged[1]["train/grad_norm"] > 0 and logged[2]["train/reward_margin"] != 0

    manifest = json.loads((adapters / NAME / "v2" / "loraplane-adapter.json").read_text())
    assert manifest["parent"] == {"name": NAME, "version": "v1", "source": f"{NAME}@v1"}
    assert manifest["lora"]["r"] == 4  # the parent's rank, not demo.yaml's 16


@pytest.mark.slow
def test_distill_from_an_adapter_teacher(tmp_path, sft_adapter):
    train, heldout = head(tmp_path, "data/demo/train.jsonl", 8), head(tmp_path, "data/demo/heldout.jsonl", 2)
    out = tmp_path / "distill"
    flags = ["--train.method", "distill", "--distill.teacher", str(sft_adapter), "--lora.r", "2"]
    flags += ["--data.train", str(train), "--data.eval", str(heldout), "--publish.enabled", "false"]
    assert main(args(out, tmp_path / "adapters", *flags)) == 0
    logged = [m for m in metrics(out) if "train/loss" in m]
    assert all(m["train/kl"] > 0 and m["train/ce"] > 0 for m in logged)
    saved = sorted(p.name for p in (out / "adapter").iterdir())  # the student only, not the teacher
    assert saved == ["README.md", "adapter_config.json", "adapter_model.safetensors", "loraplane-adapter.json"]
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 2


def test_init_from_an_adapter_of_another_base_is_refused_before_training(tmp_path, base_dir, capsys):
    adapter = tmp_path / "other"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    other = "ab" * 32
    (adapter / "loraplane-adapter.json").write_text(json.dumps({"base": {"name": "x", "weights_sha256": other}}))
    assert main(args(tmp_path / "run", tmp_path / "adapters", "--lora.init_from", str(adapter),
                     "--publish.version", "v1")) == 2  # fmt: skip
    err = capsys.readouterr().err
    ours = json.loads((base_dir / "loraplane-base.json").read_text())["weights_sha256"]
    assert other in err and ours in err and "lora.init_from" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_teacher_with_another_tokenizer_is_refused_before_training(tmp_path, base_dir, tokenizer, capsys):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    shutil.copyfile(base_dir / "config.json", teacher / "config.json")
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(base_dir)
    other.add_tokens(["<not-in-the-student>"])
    other.save_pretrained(teacher)
    flags = ["--train.method", "distill", "--distill.teacher", str(teacher), "--publish.enabled", "false"]
    assert main(args(tmp_path / "run", tmp_path / "adapters", *flags)) == 2
    err = capsys.readouterr().err
    assert str(teacher) in err and str(base_dir) in err and "vocabularies differ" in err


@pytest.mark.slow
def test_early_stopping_publishes_the_best_checkpoint_not_the_last_step(tmp_path, tiny_dataset):
    from safetensors.torch import load_file

    out, adapters = tmp_path / "run", tmp_path / "adapters"
    heldout = head(tmp_path, "data/demo/heldout.jsonl", 4)  # unrelated to the tiny data: eval loss rises
    flags = ["--data.train", str(tiny_dataset), "--data.eval", str(heldout), "--train.lr", "1e-2"]
    flags += ["--train.max_steps", "4", "--train.eval_every", "1", "--train.early_stopping_patience", "2"]
    flags += ["--train.save_every", "1", "--train.histogram_every", "1", "--publish.version", "v1"]
    assert main(args(out, adapters, *flags)) == 0
    summary = json.loads((out / "summary.json").read_text())
    best, last = summary["best_step"], summary["steps"]
    assert best is not None and best < last, summary
    published = load_file(adapters / NAME / "v1" / "adapter_model.safetensors")
    best_weights = load_file(out / "checkpoints" / "best" / f"step-{best:06d}.safetensors")
    last_weights = load_file(out / "checkpoints" / f"step-{last:06d}" / "adapter_model.safetensors")
    assert published.keys() == best_weights.keys()
    assert all(published[k].equal(best_weights[k]) for k in published)
    assert any(not published[k].equal(last_weights[k]) for k in published)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"histograms": 0}).Reload()
    tags = events.Tags()
    assert {"lora_weights/q_proj.lora_A", "lora_grads/v_proj.lora_B"} <= set(tags["histograms"])
    assert len(events.Scalars("train/grad_norm")) == last
