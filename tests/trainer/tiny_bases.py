"""Randomly initialised small checkpoints, made in the test (nothing bundled, nothing downloaded).

Each is a real Hugging Face directory: config.json, model.safetensors, and the tokenizer of the
bundled SmolLM2 (49,152 tokens, with its chat template) copied next to them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_SOURCE = REPO / "models" / "smollm2-135m-instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# head_dim 64: a size vLLM's CPU attention kernels accept; 2 layers, hidden 128 (~6.6M parameters,
# most of them the tied 49,152 x 128 embedding)
SHAPE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 1024,
         "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}  # fmt: skip
ARCHITECTURES = ("llama", "qwen2")


def copy_tokenizer(dest: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copy(TOKENIZER_SOURCE / name, dest / name)


def make_tiny_base(dest: Path, kind: str = "llama", seed: int = 0) -> Path:
    """Save a random 2-layer `kind` (llama | qwen2) causal LM with a working tokenizer into `dest`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[kind]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**SHAPE))
    dest.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(dest, safe_serialization=True)
    copy_tokenizer(dest)
    return dest
