"""What the trainer writes, served by a real vLLM CPU engine, answers as PEFT computes it:
an adapter on some layers (lora.layers), an AdaLoRA adapter converted to plain LoRA, and
`loraplane merge`'s checkpoint served without LoRA.

vLLM runs in the engine's dtype (bf16 on CPUs with AVX512-BF16), PEFT in float32, so greedy
tokens are compared up to a near-tie: where PEFT's top two candidates are within NEAR_TIE nats,
rounding may pick either, and the comparison of that sequence stops there.
"""

from __future__ import annotations

import httpx
import pytest
import torch

from tests.conftest import BASE_NAME, free_port

pytestmark = pytest.mark.slow

PROMPTS = [
    "Extract the fields as JSON. Order 1182 from Dana Whitfield, shipped to Leeds: two kettles. JSON:",
    "The capital of France is",
    "Write a haiku about the sea:",
]
NEW_TOKENS = 8
NEAR_TIE = 0.5  # measured: a strong random adapter put a bf16-vs-fp32 flip at a 0.156-nat margin


def prompt_ids(tokenizer) -> list[list[int]]:  # noqa: ANN001
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


@torch.no_grad()
def peft_greedy(model, ids: list[list[int]]) -> list[list[tuple[int, float]]]:  # noqa: ANN001
    """Per prompt, per new token: (greedy token, margin in nats over the runner-up)."""
    out = []
    for prompt in ids:
        seq, steps = torch.tensor([prompt]), []
        for _ in range(NEW_TOKENS):
            logprobs = model(input_ids=seq).logits[0, -1].float().log_softmax(-1)
            top = logprobs.topk(2)
            steps.append((int(top.indices[0]), float(top.values[0] - top.values[1])))
            seq = torch.cat([seq, top.indices[:1].view(1, 1)], dim=1)
        out.append(steps)
    return out


def vllm_greedy(url: str, model: str, ids: list[list[int]]) -> list[list[int]]:
    body = {"model": model, "prompt": ids, "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True,
            "return_tokens_as_token_ids": True, "logprobs": 1}  # fmt: skip
    choices = httpx.post(f"{url}/v1/completions", json=body, timeout=300).raise_for_status().json()["choices"]
    choices.sort(key=lambda c: c["index"])
    return [[int(t.removeprefix("token_id:")) for t in c["logprobs"]["tokens"]] for c in choices]


def assert_same_greedy(served: list[list[int]], reference: list[list[tuple[int, float]]]) -> None:
    compared = 0
    for got, want in zip(served, reference, strict=True):
        for token, (want_token, margin) in zip(got, want, strict=True):
            if token != want_token:
                assert margin < NEAR_TIE, f"vLLM chose {token}, PEFT {want_token} by a margin of {margin:.3f} nats"
                break
            compared += 1
    assert compared >= NEW_TOKENS * len(PROMPTS) - 8, f"only {compared} tokens compared"


def load_adapter(url: str, name: str, path) -> None:  # noqa: ANN001
    body = {"lora_name": name, "lora_path": str(path)}
    httpx.post(f"{url}/v1/load_lora_adapter", json=body, timeout=120).raise_for_status()


def strong_lora(base_dir, out, layers: list[str]):  # noqa: ANN001, ANN201
    """Our trainer's LoRA wrapping (with `layers` flags), random weights strong enough to change answers."""
    from transformers import AutoModelForCausalLM

    from trainer.adalora import save_adapter
    from trainer.config import load_config
    from trainer.model import add_lora

    cfg = load_config(None, ["--lora.r", "8", "--lora.alpha", "8", *layers,
                             "--lora.target_modules", "[q_proj, k_proj, v_proj, o_proj]"])  # fmt: skip
    model = add_lora(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), cfg.lora, BASE_NAME)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    save_adapter(model, out)
    return model.eval()


def test_vllm_serves_layer_and_adalora_adapters_as_peft_computes_them(engine, base_dir, tokenizer, tmp_path):
    from tests.trainer.test_adalora import random_adalora
    from trainer.adalora import save_adapter

    ids = prompt_ids(tokenizer)
    base = vllm_greedy(engine.url, BASE_NAME, ids)
    layered = strong_lora(base_dir, tmp_path / "layers", ["--lora.layers", "20-29"])
    adalora = random_adalora(base_dir, layers="0-9").float()
    save_adapter(adalora, tmp_path / "adalora")
    for name, model in (("layers-20-29", layered), ("adalora-0-9", adalora)):
        load_adapter(engine.url, name, tmp_path / name.split("-")[0])
        served = vllm_greedy(engine.url, name, ids)
        assert served != base, f"{name} does not change vLLM's answers; the comparison would prove nothing"
        assert_same_greedy(served, peft_greedy(model, ids))


def test_vllm_serves_the_merged_checkpoint_as_base_plus_adapter(base_dir, tokenizer, tmp_path):
    """`loraplane merge` output (saved in the base's dtype), served without LoRA by its own engine
    (no session adapters needed, so this test does not wait for their training)."""
    import json

    from serving.config import load_config
    from serving.engines.process import EngineProcess
    from trainer.base_models import read_manifest
    from trainer.merge import main as merge_main

    adapter = tmp_path / "adapter"
    peft_model = strong_lora(base_dir, adapter, [])
    manifest = {"format": 1, "name": "merge-check", "version": "v1", "lora": {"r": 8},
                "base": {"name": BASE_NAME, "weights_sha256": read_manifest(base_dir)["weights_sha256"]}}  # fmt: skip
    (adapter / "loraplane-adapter.json").write_text(json.dumps(manifest))
    out = tmp_path / "models" / "merged"
    assert merge_main(["--adapter", str(adapter), "--out", str(out), "--models-dir", str(base_dir.parent)]) == 0
    ids = prompt_ids(tokenizer)
    want = peft_greedy(peft_model, ids)
    with peft_model.disable_adapter():
        base = [[t for t, _ in seq] for seq in peft_greedy(peft_model, ids)]
    assert base != [[t for t, _ in seq] for seq in want], "the adapter does not change the answers"
    del peft_model

    cfg = load_config(None, {"registry.models_dir": str(out.parent), "registry.adapters_dir": str(tmp_path / "none"),
                             "engine.port": free_port()})  # fmt: skip
    with EngineProcess(cfg, out, "merged", 0, tmp_path).running(600) as merged_engine:
        assert_same_greedy(vllm_greedy(merged_engine.url, "merged", ids), want)
