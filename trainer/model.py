"""Base model + tokenizer loading (precision by hardware, optional 4/8-bit) and LoRA wrapping."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.config import LoraConfig, ModelConfig
from trainer.errors import BaseModelError, ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    name: str  # fp32 | bf16 | fp16: dtype of the (non-quantized) base weights and of compute
    mixed_precision: str  # what accelerate autocasts to: "no" | "bf16" | "fp16"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]


def choose_precision(requested: str) -> Precision:
    """auto: bf16 on CUDA GPUs that support it, fp16 on older GPUs, fp32 on CPU.

    CPUs without native bf16 (AVX2 only) run fp32 several times faster than bf16.
    """
    name = requested
    if requested == "auto" and torch.cuda.is_available():
        name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    elif requested == "auto":
        name = "fp32"
    if name == "fp16" and not torch.cuda.is_available():
        raise ConfigError("model.precision fp16 needs a CUDA GPU (no fp16 grad scaling on CPU); use fp32 or bf16")
    return Precision(name, "no" if name == "fp32" else name)


def load_tokenizer(base_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.eos_token is None:
        raise BaseModelError(f"{base_dir}: tokenizer has no eos_token; answers need one to stop generation")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(cfg: ModelConfig, compute_dtype: torch.dtype):
    if cfg.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base_model(base_dir: Path, cfg: ModelConfig, precision: Precision, device: torch.device):
    from transformers import AutoModelForCausalLM

    quant = quantization_config(cfg, precision.dtype)
    kwargs = {"dtype": precision.dtype, "attn_implementation": cfg.attn_implementation}
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": device})
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    model.config.use_cache = False  # training: no KV cache (also required for packed rows)
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def peft_lora_config(cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_rslora=cfg.rslora,
        use_dora=cfg.use_dora,
        modules_to_save=cfg.modules_to_save or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_lora(model, cfg: LoraConfig, base_name: str):
    """Wrap with PEFT LoRA; adapter weights stay fp32 even on a bf16/fp16 base."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, peft_lora_config(cfg), autocast_adapter_dtype=True)
    # PEFT records the local path it was loaded from; the registry name is portable.
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    return peft_model


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
