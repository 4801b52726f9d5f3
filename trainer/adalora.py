"""AdaLoRA in the loop, and its conversion to the plain LoRA that vLLM serves.

AdaLoRA (PEFT's AdaLoraModel) writes each adapted weight's delta as an SVD-like triplet
    delta W = B @ (A * E) * scaling / (ranknum + 1e-5)      A: [r, in], E: [r, 1], B: [out, r]
and prunes singular values E to a shrinking rank budget during training. vLLM only loads LoRA
(delta W = B' @ A' * alpha / r), so `save_adapter` folds E and the scale into A and keeps the
unpruned triplets: rank R = the largest number of kept triplets over all modules; modules that
kept fewer are zero-padded to R. With alpha = R the plain LoRA's scale is 1 and it computes the
same delta as the AdaLoRA model.

Three calls from the loop (trainer/train.py): `after_optimizer_step` each step (AdaLoRA's budget
update needs the step's gradients, so it runs before zero_grad), `published_lora_config` for the
manifest, `save_adapter` at the end. Not applied: PEFT's orthogonal regularisation, which PEFT
adds in its model forward when labels are given; our loss module calls the decoder directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trainer.config import LoraConfig
from trainer.errors import ConfigError, PublishError


def is_adalora(peft_model) -> bool:
    return type(peft_model.peft_config["default"]).__name__ == "AdaLoraConfig"


def check_rank_budget(cfg: LoraConfig, max_lora_rank: int) -> None:
    """Before training: refuse what cannot fit. An average final rank (target_r) above the limit
    means some module keeps more; init_r above it may or may not fit (checked at publish)."""
    if cfg.method == "adalora" and cfg.adalora.target_r > max_lora_rank:
        raise ConfigError(
            f"lora.adalora.target_r {cfg.adalora.target_r} > publish.max_lora_rank {max_lora_rank}: the "
            "published LoRA's rank (the largest kept AdaLoRA rank) would exceed what the engine serves; "
            "lower target_r (and init_r) or raise publish.max_lora_rank with the server's --max-lora-rank"
        )


def planned_rank(cfg: LoraConfig) -> int:
    """The smallest rank the published adapter can have (for the pre-training servability check)."""
    return cfg.r if cfg.method == "lora" else cfg.adalora.target_r


def after_optimizer_step(peft_model, step: int) -> None:
    """AdaLoRA's importance update and budget masking for optimizer step `step` (0-based)."""
    if is_adalora(peft_model):
        peft_model.base_model.update_and_allocate(step)


def _svd_layers(peft_model):
    from peft.tuners.adalora.layer import SVDLinear

    return [(name, m) for name, m in peft_model.named_modules() if isinstance(m, SVDLinear)]


@torch.no_grad()
def lora_factors(peft_model) -> tuple[dict[str, torch.Tensor], int]:
    """AdaLoRA triplets -> plain LoRA tensors {module.lora_A.weight: [R, in], .lora_B.weight: [out, R]}
    in the PEFT key layout, and R (alpha = R, so the LoRA scale alpha / r is 1)."""
    kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, layer in _svd_layers(peft_model):
        a, b, e = layer.lora_A["default"], layer.lora_B["default"], layer.lora_E["default"]
        scale = layer.scaling["default"] / (layer.ranknum["default"] + 1e-5)
        keep = e.squeeze(-1) != 0  # pruned triplets have E masked to exactly 0
        kept[name] = ((a[keep] * e[keep] * scale).float(), b[:, keep].float())
    rank = max((a.shape[0] for a, _ in kept.values()), default=0)
    if rank == 0:
        raise PublishError("AdaLoRA kept no rank in any module (every singular value pruned); nothing to publish")
    tensors = {}
    for name, (a, b) in kept.items():
        pad = rank - a.shape[0]
        tensors[f"{name}.lora_A.weight"] = torch.cat([a, a.new_zeros(pad, a.shape[1])]).contiguous()
        tensors[f"{name}.lora_B.weight"] = torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1).contiguous()
    return tensors, rank


def published_lora_config(peft_model):
    """The PEFT config of the adapter as published: the run's LoRA config, or AdaLoRA's as plain LoRA."""
    source = peft_model.peft_config["default"]
    if not is_adalora(peft_model):
        return source
    from peft import LoraConfig as PeftLoraConfig

    rank = lora_factors(peft_model)[1]
    return PeftLoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=source.lora_dropout,
        target_modules=source.target_modules,
        layers_to_transform=source.layers_to_transform,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=source.base_model_name_or_path,
    )


def save_adapter(peft_model, out_dir: Path) -> None:
    """save_pretrained for LoRA; for AdaLoRA, the equivalent plain LoRA in the same file layout."""
    if not is_adalora(peft_model):
        # only the trained adapter: a distillation teacher may sit beside it on the same base
        peft_model.save_pretrained(out_dir, save_embedding_layers=False, selected_adapters=["default"])
        return
    from safetensors.torch import save_file

    tensors, _ = lora_factors(peft_model)
    config = published_lora_config(peft_model)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    save_file(tensors, out_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    source = peft_model.peft_config["default"]
    note = {"init_r": source.init_r, "target_r": source.target_r, "rank_pattern": source.rank_pattern}
    (out_dir / "adalora.json").write_text(json.dumps(note, indent=1) + "\n")  # what was pruned (not served)
