"""`loraplane adapters publish` of adapters made outside our trainer (plain PEFT directories).

The adapter is made by PEFT itself on the bundled base, published with the CLI (which writes
the manifest: base checked by name and tensor shapes), validated by the real registry, then
served by the real gateway (in front of the mock engine: only the gateway's side is under test).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from fakes.engine import MockSettings
from fakes.engine import create_app as create_mock_engine
from fakes.servers import ServerThread
from serving.cli import adapters_main, eval_summary
from serving.publish import base_weight_shapes
from tests.conftest import BASE_NAME, REPO


@pytest.fixture()
def config(tmp_path: Path, base_dir: Path) -> Path:
    path = tmp_path / "serving.yaml"
    path.write_text(
        f"base: {BASE_NAME}\nregistry: {{models_dir: {REPO / 'models'}, adapters_dir: {tmp_path / 'adapters'}}}\n"
    )
    return path


@pytest.fixture(scope="module")
def peft_made_adapter(tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> Path:
    """What a PEFT user has: save_pretrained of get_peft_model on the base; no loraplane manifest."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    out = tmp_path_factory.mktemp("outside") / "peft-dir"
    peft_model.save_pretrained(out)
    return out


def plain_adapter(root: Path, base_dir: Path, base_name: str, in_dim: int | None = None) -> Path:
    """A plain PEFT dir with numpy tensors shaped for the base's layer-0 q_proj (in_dim: break it)."""
    out_dim, real_in = base_weight_shapes(base_dir)["model.layers.0.self_attn.q_proj"]
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {
        f"{key}.lora_A.weight": np.zeros((4, in_dim or real_in), np.float32),
        f"{key}.lora_B.weight": np.zeros((out_dim, 4), np.float32),
    }
    root.mkdir(parents=True)
    save_file(tensors, str(root / "adapter_model.safetensors"))
    peft = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj"],
        "base_model_name_or_path": base_name,
    }
    (root / "adapter_config.json").write_text(json.dumps(peft))
    return root


@pytest.mark.slow  # ~20 s: loads torch and the base to make the adapter with PEFT
def test_peft_made_adapter_publishes_then_serves(peft_made_adapter: Path, config: Path, tmp_path: Path, capsys) -> None:
    import openai

    assert not (peft_made_adapter / "loraplane-adapter.json").exists()
    assert adapters_main(["--config", str(config), "publish", str(peft_made_adapter), "bot@v3"]) == 0
    published = tmp_path / "adapters" / "bot" / "v3"
    manifest = json.loads((published / "loraplane-adapter.json").read_text())
    base_sha = json.loads((REPO / "models" / BASE_NAME / "loraplane-base.json").read_text())["weights_sha256"]
    assert manifest["base"] == {"name": BASE_NAME, "weights_sha256": base_sha, "checked_by": "name and tensor shapes"}
    assert manifest["lora"]["r"] == 4 and manifest["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert manifest["dataset"]["sha256"] == "unknown" and manifest["eval"]["value"] is None
    capsys.readouterr()
    assert adapters_main(["--config", str(config), "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["bot@v3", "stable*", "ok", "eval", "unknown"]

    from serving.config import load_config
    from serving.gateway.app import create_app

    cfg = load_config([config])
    with (
        ServerThread(create_mock_engine(MockSettings(base=BASE_NAME, tokens=3, ttft_ms=1, itl_ms=1))) as engine,
        ServerThread(create_app(cfg, [engine.url], health_interval_s=0.5)) as gateway,
    ):
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
        raw = client.chat.completions.with_raw_response.create(
            model="bot@v3", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert raw.headers["x-loraplane-adapter"] == "bot@v3"
        assert raw.parse().choices[0].message.content
        assert Path(engine.app.state.engine.adapters["bot@v3"]) == published.resolve()


def test_base_named_otherwise_needs_base_flag(config: Path, tmp_path: Path, base_dir: Path, capsys) -> None:
    src = plain_adapter(tmp_path / "src", base_dir, "someone/llama-2-7b")
    assert adapters_main(["--config", str(config), "publish", str(src), "bot@v1"]) == 2
    err = capsys.readouterr().err
    assert "'someone/llama-2-7b'" in err and f"--base {BASE_NAME}" in err
    assert adapters_main(["--config", str(config), "publish", str(src), "bot@v1", "--base", BASE_NAME]) == 0
    hf_named = plain_adapter(tmp_path / "hf", base_dir, "HuggingFaceTB/SmolLM2-135M-Instruct")  # case, org aside
    assert adapters_main(["--config", str(config), "publish", str(hf_named), "bot@v2"]) == 0


def test_tensor_shapes_must_fit_the_base(config: Path, tmp_path: Path, base_dir: Path, capsys) -> None:
    src = plain_adapter(tmp_path / "src", base_dir, BASE_NAME, in_dim=100)
    assert adapters_main(["--config", str(config), "publish", str(src), "bot@v1"]) == 2
    err = capsys.readouterr().err
    assert "lora_A.weight has shape [4, 100]" in err and "(input)" in err
    assert not (tmp_path / "adapters" / "bot" / "v1").exists()


@pytest.mark.parametrize(
    ("model", "reason"), [("Bad Name@v1", "must match"), ("bot@latest", "v1, v2"), ("bot", "bot@v1")]
)
def test_bad_target_name_is_a_publish_error(
    config: Path, tmp_path: Path, base_dir: Path, capsys, model, reason
) -> None:
    src = plain_adapter(tmp_path / "src", base_dir, BASE_NAME)
    assert adapters_main(["--config", str(config), "publish", str(src), model]) == 2
    err = capsys.readouterr().err
    assert reason in err and "does not exist" not in err


@pytest.mark.parametrize(
    ("evaluation", "shown"),
    [
        ({"metric": "exact_match", "value": 0.5833333333, "n": 48}, "exact_match=0.583 (28/48)"),
        ({"metric": "exact_match", "value": 1.0}, "exact_match=1.000"),
        ({"metric": "unknown", "value": None}, "eval unknown"),
        (None, "eval unknown"),
    ],
)
def test_list_rounds_metrics(evaluation, shown) -> None:
    assert eval_summary({"eval": evaluation}) == shown
