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


BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo flags of native bf16 matmuls


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True on CPUs with AVX512-BF16 or AMX-BF16 (Zen 4+, Sapphire Rapids+)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return not BF16_CPU_FLAGS.isdisjoint(flags)


def choose_precision(requested: str, native_bf16_cpu: bool | None = None) -> Precision:
    """auto: bf16 on CUDA GPUs that support it, fp16 on older GPUs; on CPU bf16 where the CPU has
    native bf16 (AVX512-BF16 / AMX), else fp32.

    bf16 here means: frozen base weights stored and computed in bf16, LoRA weights (and their
    AdamW state) kept in fp32, matmuls autocast to bf16 (benchmarks/RESULTS.md, "Trainer
    throughput"). CPUs without native bf16 (AVX2 only) run fp32 several times faster than bf16.
    """
    name = requested
    if requested == "auto" and torch.cuda.is_available():
        name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    elif requested == "auto":
        native = cpu_has_native_bf16() if native_bf16_cpu is None else native_bf16_cpu
        name = "bf16" if native else "fp32"
    if name == "fp16" and not torch.cuda.is_available():
        raise ConfigError("model.precision fp16 needs a CUDA GPU (no fp16 grad scaling on CPU); use fp32 or bf16")
    return Precision(name, "no" if name == "fp32" else name)


def make_accelerator(precision: Precision):
    """accelerate's Accelerator for this run's precision.

    Its state is a per-process singleton that refuses a second run in another precision
    ("AcceleratorState has already been initialized"). A single process that trains several runs
    in turn (tests, benchmarks, notebooks) gets its mixed-precision state reset (the newest run's
    precision then applies to the process); a process of a multi-process launch never does (its
    state came from the launcher).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != precision.mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision.mixed_precision, cpu=not torch.cuda.is_available())


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


def check_layers(cfg: LoraConfig, num_layers: int) -> None:
    """lora.layers must name existing decoder layers (0 .. num_layers - 1)."""
    bad = [i for i in cfg.layers or [] if i >= num_layers]
    if bad:
        raise ConfigError(
            f"lora.layers: layer {bad[0]} does not exist; the base has {num_layers} decoder layers "
            f'(0-{num_layers - 1}), e.g. lora.layers: "{max(num_layers - 10, 0)}-{num_layers - 1}"'
        )


def peft_lora_config(cfg: LoraConfig, max_steps: int = 1):
    """PEFT config for lora.method: LoraConfig, or AdaLoraConfig (its budget schedule spans max_steps)."""
    from peft import AdaLoraConfig as PeftAdaLoraConfig
    from peft import LoraConfig as PeftLoraConfig

    common = {
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": cfg.target_modules,
        "layers_to_transform": cfg.layers,
        "use_rslora": cfg.rslora,
        "modules_to_save": cfg.modules_to_save or None,
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }
    if cfg.method == "lora":
        return PeftLoraConfig(r=cfg.r, use_dora=cfg.use_dora, **common)
    ada = cfg.adalora
    return PeftAdaLoraConfig(
        init_r=ada.init_r,
        target_r=ada.target_r,
        tinit=int(ada.tinit_ratio * max_steps),
        tfinal=int(ada.tfinal_ratio * max_steps),
        deltaT=ada.delta_t,
        beta1=ada.beta1,
        beta2=ada.beta2,
        orth_reg_weight=ada.orth_reg_weight,
        total_step=max_steps,
        **common,
    )


def add_lora(model, cfg: LoraConfig, base_name: str, max_steps: int = 1):
    """Wrap with PEFT LoRA (or AdaLoRA); adapter weights stay fp32 even on a bf16/fp16 base."""
    from peft import get_peft_model

    check_layers(cfg, model.config.num_hidden_layers)
    peft_model = get_peft_model(model, peft_lora_config(cfg, max_steps), autocast_adapter_dtype=True)
    # PEFT records the local path it was loaded from; the registry name is portable.
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    return peft_model


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
