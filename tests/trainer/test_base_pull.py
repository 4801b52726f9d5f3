"""`loraplane base`: bundled base provisioning and what counts as a base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.base_models import BUNDLED, check_causal_lm_dir, main, resolve_base, weights_sha256
from trainer.errors import BaseModelError

REPO = Path(__file__).resolve().parents[2]
PULLED = REPO / "models" / "smollm2-135m-instruct"


def test_unknown_name_is_one_line_error_listing_accepted(capsys) -> None:
    assert main(["pull", "gpt-17"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "gpt-17" in err and "smollm2-135m-instruct" in err


def test_directory_that_is_not_a_causal_lm_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(BaseModelError, match="not a causal LM.*ForCausalLM"):
        check_causal_lm_dir(tmp_path)
    with pytest.raises(BaseModelError, match="no config.json"):
        check_causal_lm_dir(tmp_path / "missing")


def test_resolve_by_name_or_local_dir(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert resolve_base(str(tmp_path), REPO / "models") == tmp_path
    with pytest.raises(BaseModelError, match="loraplane base pull smollm2"):
        resolve_base("smollm2-135m-instruct", tmp_path / "empty-models")


def test_pulled_base_manifest_matches_its_weights() -> None:
    if not (PULLED / "loraplane-base.json").is_file():
        pytest.fail("models/smollm2-135m-instruct missing: `make test` pulls it first")
    manifest = json.loads((PULLED / "loraplane-base.json").read_text())
    assert manifest["weights_sha256"] == weights_sha256(PULLED)
    assert manifest["architecture"] == "LlamaForCausalLM" and manifest["name"] in BUNDLED
    assert (PULLED / "chat_template.jinja").is_file() or "chat_template" in (
        PULLED / "tokenizer_config.json"
    ).read_text()


@pytest.mark.slow
def test_pulled_base_is_a_working_instruct_model() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(PULLED)
    model = AutoModelForCausalLM.from_pretrained(PULLED, dtype=torch.float32)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
