"""loraplane trainer: dataset -> LoRA/QLoRA adapter, evaluated, published to the registry.

Never imports `serving`: the two share files (models/, adapters/), not code.
"""
