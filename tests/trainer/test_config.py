"""Config: defaults, YAML + dotted overrides, validation messages, every shipped trainer YAML."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from trainer.config import Config, load_config, parse_overrides
from trainer.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
# Trainer configs live in configs/train/, serving configs in configs/serving/.
TRAINER_CONFIGS = sorted(REPO.glob("configs/train/*.yaml"))


def test_defaults_build_without_yaml():
    cfg = Config()
    assert cfg.lora.r == 16 and cfg.publish.max_lora_rank == 16
    assert load_config(None, []).to_dict() == cfg.to_dict()


def test_dotted_overrides_are_typed(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("train:\n  max_steps: 10\nlora:\n  r: 8\n")
    cfg = load_config(
        yaml_file,
        [
            "--train.max_steps",
            "3",
            "--train.lr=1e-3",
            "--publish.name",
            "test-adapter",
            "--publish.version",
            "v1",
            "--lora.target_modules",
            "all-linear",
            "--data.eval",
            "null",
            "--models_dir",
            "/x/models",
        ],
    )
    assert cfg.train.max_steps == 3 and cfg.lora.r == 8
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.publish.name == "test-adapter" and cfg.lora.target_modules == "all-linear"
    assert cfg.data.eval is None and cfg.models_dir == "/x/models"


def test_list_override():
    cfg = load_config(None, ["--lora.target_modules", "[q_proj, v_proj, gate_proj]"])
    assert cfg.lora.target_modules == ["q_proj", "v_proj", "gate_proj"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train.max_step", "3"], "unknown config key 'train.max_step'"),
        (["--nope", "1"], "unknown config key 'nope'"),
        (["--train.max_steps", "three"], "train.max_steps: expected int"),
        (["--train.max_steps", "0"], "train.max_steps must be >= 1"),
        (["--lora.r", "true"], "lora.r: expected int"),
        (["--train.scheduler", "step"], "train.scheduler must be one of cosine, linear, constant"),
        (["--lora.target_modules", "qkv"], "lora.target_modules must be a list"),
        (["--publish.version", "1"], "publish.version must look like v1"),
        (["--publish.name", "Bad Name"], "publish.name must match"),
        (["--data.val_ratio", "0.1"], "Can't set both `data.eval` and `data.val_ratio`"),
        (["--train", "3"], "train must be a mapping"),
        (["--train.max_steps"], "needs a value"),
        (["--train.method", "ppo"], "train.method must be one of sft, dpo, distill"),
        (["--train.method", "distill"], "train.method distill needs distill.teacher"),
        (["--dpo.beta", "0"], "dpo.beta must be > 0"),
        (["--distill.kl_weight", "1.5"], "distill.kl_weight must be in [0, 1]"),
        (["--train.histogram_every", "-1"], "train.histogram_every must be >= 0"),
    ],
)
def test_bad_values_name_the_key(flags, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, flags)


def test_parse_overrides_nested():
    assert parse_overrides(["--a.b.c", "1", "--a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_publish_target_required_only_when_publishing():
    with pytest.raises(ConfigError, match="publish.name and publish.version are required"):
        Config().publish.require_target()
    load_config(None, ["--publish.enabled", "false"]).publish.require_target()


def test_trainer_configs_are_shipped():
    names = {p.name for p in TRAINER_CONFIGS}
    assert {"demo.yaml", "demo-v2.yaml"} <= names


@pytest.mark.parametrize("path", TRAINER_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_trainer_yaml_loads(path):
    from trainer.model import peft_lora_config, quantization_config
    from trainer.publish import servability_problems

    cfg = load_config(path, [])
    cfg.publish.require_target()
    assert (REPO / cfg.data.train).is_file(), cfg.data.train
    assert cfg.data.eval is None or (REPO / cfg.data.eval).is_file(), cfg.data.eval
    # the pieces built from it are valid too: PEFT LoRA config, bitsandbytes config, servability
    lora = peft_lora_config(cfg.lora, cfg.train.max_steps)
    if cfg.lora.method == "lora":
        assert lora.r == cfg.lora.r and not servability_problems(lora.to_dict(), cfg.publish.max_lora_rank)
    else:  # AdaLoRA: published as plain LoRA of rank <= init_r, which the engine must serve
        assert (lora.init_r, lora.total_step) == (cfg.lora.adalora.init_r, cfg.train.max_steps)
        assert lora.orth_reg_weight == cfg.lora.adalora.orth_reg_weight  # PEFT's config carries ours
        assert cfg.lora.adalora.init_r <= cfg.publish.max_lora_rank
    quant = quantization_config(cfg.model, torch.bfloat16)
    assert (quant is None) == (cfg.model.quantization == "none")


def test_qlora_config_is_nf4_double_quant():
    cfg = load_config(REPO / "configs/train/deepseek-llm-7b-qlora.yaml")
    assert (cfg.model.quantization, cfg.model.double_quant) == ("nf4", True)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (16, 32, ["q_proj", "v_proj"])
    assert 0.05 <= cfg.lora.dropout <= 0.1 and cfg.train.lr == 2e-4 and cfg.train.scheduler == "cosine"
    assert 0.03 <= cfg.train.warmup_ratio <= 0.05
    assert load_config(REPO / "configs/train/deepseek-llm-7b-lora-all-linear.yaml").lora.target_modules == "all-linear"


def test_demo_v1_and_v2_are_two_versions_of_one_adapter():
    v1, v2 = load_config(REPO / "configs/train/demo.yaml"), load_config(REPO / "configs/train/demo-v2.yaml")
    assert v1.publish.name == v2.publish.name == "demo-json"
    assert (v1.publish.version, v2.publish.version) == ("v1", "v2")
    assert (v1.lora, v1.train) != (v2.lora, v2.train), "v2 must be a different configuration"


def test_dpo_and_distill_recipes_build_on_demo_v1():
    from trainer.preferences import is_preference_file

    dpo = load_config(REPO / "configs/train/demo-dpo.yaml")
    assert (dpo.train.method, dpo.lora.init_from, dpo.publish.name) == ("dpo", "demo-json@v1", "demo-json")
    assert is_preference_file(str(REPO / dpo.data.train)) and is_preference_file(str(REPO / dpo.data.eval))
    distill = load_config(REPO / "configs/train/demo-distill.yaml")
    assert (distill.train.method, distill.distill.teacher, distill.lora.r) == ("distill", "demo-json@v1", 4)
    assert load_config(REPO / "configs/train/demo.yaml").lora.r == 16  # the teacher's rank


def test_default_run_writes_a_checkpoint_that_resume_can_use():
    """`resume: true` is the default, so the default run must write checkpoints for it to resume from."""
    cfg = load_config(None, [])
    assert cfg.resume is True
    assert 0 < cfg.train.save_every <= cfg.train.max_steps, "a default run would write no checkpoint"
