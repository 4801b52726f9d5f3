"""A registry the gateway accepts, for serving through the mock engine (tests, benchmarks).

The gateway validates adapters by their files (docs/registry.md): a base manifest, and per
version a PEFT `adapter_config.json`, a well-formed `adapter_model.safetensors` and a manifest
pinning the base's checksum. The mock engine never reads weights, so one 1x1 tensor will do.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

MOCK_WEIGHTS_SHA256 = "ab" * 32  # a made-up checksum; base and adapters agree on it


def write_mock_registry(root: Path, base: str, adapter: str, versions: list[str]) -> tuple[Path, Path]:
    """Write models/<base>/ and adapters/<adapter>/<version>/ under root; return (models_dir, adapters_dir)."""
    models_dir, adapters_dir = root / "models", root / "adapters"
    (models_dir / base).mkdir(parents=True, exist_ok=True)
    base_manifest = {"format": 1, "name": base, "weights_sha256": MOCK_WEIGHTS_SHA256}
    (models_dir / base / "loraplane-base.json").write_text(json.dumps(base_manifest))
    hf_config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}  # no weights: nothing loads them
    (models_dir / base / "config.json").write_text(json.dumps(hf_config))
    tensor = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    header = json.dumps({tensor: {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}}).encode()
    for version in versions:
        path = adapters_dir / adapter / version
        path.mkdir(parents=True, exist_ok=True)
        (path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
        peft = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
        (path / "adapter_config.json").write_text(json.dumps(peft))
        manifest = {
            "format": 1,
            "name": adapter,
            "version": version,
            "base": {"name": base, "weights_sha256": MOCK_WEIGHTS_SHA256},
        }
        (path / "loraplane-adapter.json").write_text(json.dumps(manifest))
    return models_dir, adapters_dir
