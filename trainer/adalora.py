"""AdaLoRA in the loop, its checkpoint state, and its conversion to the plain LoRA that vLLM serves.

AdaLoRA (PEFT's AdaLoraModel) writes each adapted weight's delta as an SVD-like triplet
    delta W = B @ (A * E) * scaling / (ranknum + 1e-5)      A: [r, in], E: [r, 1], B: [out, r]
and prunes singular values E to a shrinking rank budget during training. vLLM only loads LoRA
(delta W = B' @ A' * alpha / r), so `save_adapter` folds E and the scale into A and keeps the
unpruned triplets: rank R = the largest number of kept triplets over all modules; modules that
kept fewer are zero-padded to R. With alpha = R the plain LoRA's scale is 1 and it computes the
same delta as the AdaLoRA model.

Orthogonal regulariser: PEFT's AdaLoraModel.forward adds orth_reg_weight * R to the (mean) loss
when labels are given, R = the mean over the adapter's A and B of ||A A^T - I||_F and
||B^T B - I||_F (Frobenius norm, not squared). Our loss modules call the decoder directly, so
`orth_reg_term` computes the same term and the loop (train.accumulate_gradients) adds it once per
optimizer step, unscaled by the step's token count: the step's gradient is that of
(sum of token losses / trained tokens) + orth_reg_weight * R, which is PEFT's loss for a step of
one micro-batch. It is logged as train/orth_reg; train/loss stays the objective's loss alone.

Checkpoints (trainer/checkpoint.py): PEFT's state dict of an AdaLoRA model drops pruned triplets
and loading it resizes the live modules (new Parameters the optimizer does not hold), so the
trained tensors are saved at full size by parameter name instead (`checkpoint_weights`), and
PEFT's RankAllocator statistics (ipt, exp_avg_ipt, exp_avg_unc) plus the rank pattern so far go
beside them (`AllocatorState`, ALLOCATOR_FILE): a resumed run allocates as the uninterrupted one.

Calls from the loop (trainer/train.py): `orth_reg_term` in each step's backward,
`after_optimizer_step` each step (AdaLoRA's budget update needs the step's gradients, so it runs
before zero_grad), `published_lora_config` for the manifest, `save_adapter` at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.config import LoraConfig
from trainer.errors import ConfigError, PublishError, TrainerError

ADAPTER = "default"  # the trained adapter's name in the PEFT model
ALLOCATOR_FILE = "adalora_allocator.safetensors"  # in a checkpoint dir, beside the weights


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


def orth_reg_term(peft_model) -> torch.Tensor | None:
    """orth_reg_weight * R as PEFT's AdaLoraModel.forward adds it to the loss (module docstring);
    None for LoRA or a weight of 0. Computed in fp32 outside autocast: the tensors are fp32."""
    if not is_adalora(peft_model):
        return None
    weight = peft_model.peft_config[ADAPTER].orth_reg_weight
    if weight == 0:
        return None
    norms = []
    for _, layer in _svd_layers(peft_model):
        a, b = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
        for cov in (a @ a.T, b.T @ b):  # [r, r] each
            eye = torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)
            norms.append(torch.linalg.matrix_norm(cov - eye, ord="fro"))
    return weight * torch.stack(norms).mean()


def after_optimizer_step(peft_model, step: int) -> None:
    """AdaLoRA's importance update and budget masking for optimizer step `step` (0-based)."""
    if is_adalora(peft_model):
        peft_model.base_model.update_and_allocate(step)


def _svd_layers(peft_model):
    from peft.tuners.adalora.layer import SVDLinear

    return [(name, m) for name, m in peft_model.named_modules() if isinstance(m, SVDLinear)]


def _trained(peft_model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in peft_model.named_parameters() if p.requires_grad}


def checkpoint_weights(peft_model) -> dict[str, torch.Tensor]:
    """The trained tensors at full size (pruned triplets included, E = 0), by parameter name."""
    return {n: p.detach().cpu().contiguous() for n, p in _trained(peft_model).items()}


@torch.no_grad()
def load_checkpoint_weights(peft_model, tensors: dict[str, torch.Tensor]) -> None:
    """Copy into the live parameters in place, so the optimizer keeps holding them."""
    params = _trained(peft_model)
    if set(tensors) != set(params):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise TrainerError(
            f"AdaLoRA checkpoint weights do not match the model (missing {missing[:3]}, unexpected "
            f"{extra[:3]}); resume with the same lora config or start a fresh out_dir"
        )
    for name, param in params.items():
        param.copy_(tensors[name])


@dataclass
class AllocatorState:
    """PEFT's RankAllocator statistics, per lora_A/B/E parameter name, and the rank pattern so far
    (None before the first pruning; after the final allocation the statistics are empty)."""

    ipt: dict[str, torch.Tensor]  # |theta * grad| of the last update
    exp_avg_ipt: dict[str, torch.Tensor]  # EMA of sensitivity (beta1)
    exp_avg_unc: dict[str, torch.Tensor]  # EMA of uncertainty (beta2)
    rank_pattern: dict[str, list[bool]] | None  # lora_E name -> kept triplets

    STATS = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    @classmethod
    def of(cls, peft_model) -> AllocatorState:
        allocator = peft_model.base_model.rankallocator
        stats = {k: {n: t.detach().cpu().contiguous() for n, t in getattr(allocator, k).items()} for k in cls.STATS}
        pattern = peft_model.peft_config[ADAPTER].rank_pattern
        return cls(**stats, rank_pattern=None if pattern is None else {n: list(m) for n, m in pattern.items()})

    def apply(self, peft_model) -> None:
        allocator = peft_model.base_model.rankallocator
        device = next(iter(_trained(peft_model).values())).device
        for key in self.STATS:
            setattr(allocator, key, {n: t.to(device) for n, t in getattr(self, key).items()})
        peft_model.peft_config[ADAPTER].rank_pattern = self.rank_pattern

    def to_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"{key}/{n}": t for key in self.STATS for n, t in getattr(self, key).items()}
        pattern = self.rank_pattern or {}
        return tensors | {f"rank_pattern/{n}": torch.tensor(mask, dtype=torch.bool) for n, mask in pattern.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> AllocatorState:
        parts: dict[str, dict[str, torch.Tensor]] = {key: {} for key in (*cls.STATS, "rank_pattern")}
        for full, tensor in tensors.items():
            key, _, name = full.partition("/")
            if key not in parts:
                raise TrainerError(
                    f"AdaLoRA allocator state has an unknown entry {full!r}; written by another version?"
                )
            parts[key][name] = tensor
        pattern = {n: t.tolist() for n, t in parts.pop("rank_pattern").items()} or None
        return cls(**parts, rank_pattern=pattern)


def save_allocator(peft_model, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(AllocatorState.of(peft_model).to_tensors(), path, metadata={"format": "pt"})


def load_allocator(peft_model, path: Path) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise TrainerError(
            f"{path} is missing: this AdaLoRA checkpoint has no rank allocator state; start a fresh out_dir"
        )
    AllocatorState.from_tensors(load_file(path)).apply(peft_model)


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
