"""loraplane: train LoRA adapters, publish them to a registry, serve them with vLLM multi-LoRA."""

__version__ = "0.1.0"
