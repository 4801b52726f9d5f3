"""`loraplane merge`: the merged checkpoint is a plain HF model computing what base + LoRA computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.trainer.sample_data import BASE_NAME, MODELS_DIR
from trainer.base_models import read_manifest, resolve_base, weights_sha256
from trainer.merge import main


def write_adapter(base_dir: Path, out: Path, sha: str | None = None) -> Path:
    """A servable adapter with random (non-zero) LoRA weights and a registry manifest."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    manifest = {
        "format": 1, "name": "merge-test", "version": "v1",
        "base": {"name": BASE_NAME, "weights_sha256": sha or read_manifest(base_dir)["weights_sha256"]},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "rslora": False},
    }  # fmt: skip
    (out / "loraplane-adapter.json").write_text(json.dumps(manifest))
    return out


def test_adapter_for_another_base_is_refused(tmp_path, base_dir, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "loraplane-adapter.json").write_text(
        json.dumps({"name": "x", "version": "v1", "base": {"name": BASE_NAME, "weights_sha256": "0" * 64}})
    )
    assert main(["--adapter", str(adapter), "--out", str(tmp_path / "m"), "--models-dir", str(MODELS_DIR)]) == 2
    assert "was trained on 000000000000" in capsys.readouterr().err


@pytest.mark.slow
def test_merged_model_matches_base_plus_adapter(tmp_path, base_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = write_adapter(base_dir, tmp_path / "adapter")
    out = tmp_path / "models" / "merge-test-merged"
    args = ["--adapter", str(adapter), "--out", str(out), "--models-dir", str(MODELS_DIR), "--dtype", "fp32"]
    assert main(args) == 0
    assert main(args) == 2  # refuses to overwrite without --force

    manifest = json.loads((out / "loraplane-base.json").read_text())
    assert manifest["weights_sha256"] == weights_sha256(out) and manifest["dtype"] == "float32"
    assert manifest["merged_from"]["adapter"]["name"] == "merge-test"
    assert resolve_base("merge-test-merged", tmp_path / "models") == out  # usable as a registry base
    assert not list(out.glob("adapter_*")) and (out / "tokenizer.json").is_file()

    ids = torch.tensor([[1, 504, 3458, 282, 4649, 47, 2]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(ids).logits
        peft_model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter
        )
        with_adapter = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            without = peft_model(input_ids=ids).logits
    assert (with_adapter - without).abs().max() > 1e-2  # the adapter matters, so equality below means something
    torch.testing.assert_close(merged, with_adapter, rtol=1e-3, atol=1e-3)
