"""A base-model request must not pick up an adapter's delta when it shares a batch with one.

vLLM's CPU LoRA ops index the adapter slots with each token's slot number; a token without an
adapter has slot -1, which Python indexing reads as the last slot (vLLM skips the ops only for a
batch of one base request). When the last slot holds an adapter of the same batch, the base
sequences run with that adapter applied (measured in-process, max_loras 1: one prompt's cumulative
log-probability moved from -2.726 to -2.857). loraplane_vllm/cpu_lora.py, the vLLM plugin
`loraplane serve` enables, gives those tokens no delta. This test runs a real engine with one slot
and checks that a base batch beside a running adapter request has the same log-probabilities as alone.
Run it with LORAPLANE_TEST_CPU_LORA_OPS=vllm to see vLLM's own ops fail it.

The second test checks the plugin's fused add_lora_linear against vLLM's own ops through two real
engines: same greedy tokens and log-probabilities for adapter requests of two ranks.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving.engine import EngineProcess
from tests.conftest import ADAPTER, BASE_NAME, free_port

pytestmark = pytest.mark.slow


PROMPTS = ["The capital of France is", "Write a haiku about the sea:"]


def base_logprobs(url: str) -> tuple[list[str], list[float]]:
    """Two prompts in one request: vLLM runs them as one batch of two base sequences."""
    body = {"model": BASE_NAME, "prompt": PROMPTS, "max_tokens": 6, "temperature": 0, "logprobs": 1}
    choices = httpx.post(f"{url}/v1/completions", json=body, timeout=120).raise_for_status().json()["choices"]
    choices.sort(key=lambda c: c["index"])
    return [c["text"] for c in choices], [lp for c in choices for lp in c["logprobs"]["token_logprobs"]]


def test_base_requests_get_no_adapter_delta_beside_an_adapter_request(serving_config, base_dir, adapters_dir, tmp_path):
    cfg = serving_config.model_copy(deep=True)
    cfg.engine.port = free_port()
    cfg.engine.max_loras, cfg.engine.max_cpu_loras = 1, 1  # the adapter sits in the last (only) slot
    cfg.engine.cpu_lora_ops = os.environ.get("LORAPLANE_TEST_CPU_LORA_OPS", "loraplane")
    with EngineProcess(cfg, base_dir, BASE_NAME, 0, tmp_path).running(600) as engine:
        alone_text, alone = base_logprobs(engine.url)
        load = {"lora_name": f"{ADAPTER}@v1", "lora_path": str(adapters_dir / ADAPTER / "v1")}
        httpx.post(f"{engine.url}/v1/load_lora_adapter", json=load, timeout=120).raise_for_status()
        long_adapter_request = {"model": f"{ADAPTER}@v1", "prompt": PROMPTS[0], "max_tokens": 400,
                                "temperature": 0, "ignore_eos": True}  # fmt: skip
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(httpx.post, f"{engine.url}/v1/completions", json=long_adapter_request, timeout=300)
            time.sleep(1.5)  # it is decoding now; the base sequences join its batch
            assert not running.done(), "the adapter request ended before the base request could join its batch"
            beside_text, beside = base_logprobs(engine.url)
            running.result().raise_for_status()
    assert beside_text == alone_text
    assert beside == pytest.approx(alone, abs=2e-3), "base log-probabilities moved when batched beside an adapter"


# The long batch (~90 prompt tokens) takes loraplane_vllm.cpu_lora's per-slice expand in its
# prefill, the short one (~16 tokens) and every decode step of two sequences its block-diagonal one.
LONG_PROMPTS = [
    "Extract the fields as JSON. Order 1182 from Dana Whitfield, shipped to Leeds on 3 March: two "
    "blue kettles at 24 pounds each and one toaster at 31 pounds, paid by card. JSON:",
    "Extract the fields as JSON. Booking for Marcus Oyelaran, room 214, arriving 12 June and leaving "
    "15 June, breakfast included, late check-in after 22:00 requested by phone. JSON:",
]
SHORT_PROMPTS = ["The capital of France is", "Write a haiku about the sea:"]


def greedy_logprobs(url: str, model: str, prompts: list[str]) -> list[list[tuple[str, float, dict[str, float]]]]:
    """Per prompt, per generated token: (token, its log-probability, top-5 alternatives)."""
    body = {"model": model, "prompt": prompts, "max_tokens": 8, "temperature": 0, "logprobs": 5}
    choices = httpx.post(f"{url}/v1/completions", json=body, timeout=120).raise_for_status().json()["choices"]
    choices.sort(key=lambda c: c["index"])
    rows = [(c["logprobs"]["tokens"], c["logprobs"]["token_logprobs"], c["logprobs"]["top_logprobs"]) for c in choices]
    return [list(zip(*row, strict=True)) for row in rows]


def compare(ours: list, theirs: list, tol: float) -> int:
    """Same greedy tokens with log-probabilities within `tol`, up to a near-tie (the two runs' top
    candidates within 2*tol of each other, where rounding may pick either); returns tokens compared."""
    compared = 0
    for our_seq, their_seq in zip(ours, theirs, strict=True):
        for (token, logprob, top), (their_token, their_logprob, _) in zip(our_seq, their_seq, strict=True):
            if token != their_token:
                assert their_token in top and abs(top[their_token] - logprob) <= 2 * tol, (token, their_token, top)
                break
            assert logprob == pytest.approx(their_logprob, abs=tol), token
            compared += 1
    return compared


def random_adapter(base_dir, path, rank: int, seed: int):  # noqa: ANN001, ANN201
    """A PEFT adapter with random A and B on q/k/v/o, big enough to change the output (the
    3-step test adapters and the benchmark's random ones move bf16 logits by less than rounding)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)  # fmt: skip
    get_peft_model(model, config).save_pretrained(path)
    return path


def test_our_ops_give_vllms_numbers_for_adapter_requests(serving_config, base_dir, tmp_path):
    """The fused ops against vLLM's own (right when every token has an adapter): two adapters of
    different ranks (16 and 8) resident, each requested with a two-prompt batch, long and short."""
    paths = {f"r{r}": random_adapter(base_dir, tmp_path / f"r{r}", r, seed) for seed, r in enumerate((16, 8))}
    results = {}
    for ops in ("vllm", "loraplane"):
        cfg = serving_config.model_copy(deep=True)
        cfg.engine.port = free_port()
        cfg.engine.cpu_lora_ops = ops
        with EngineProcess(cfg, base_dir, BASE_NAME, 0, tmp_path / ops).running(600) as engine:
            for name, path in paths.items():
                load = {"lora_name": name, "lora_path": str(path)}
                httpx.post(f"{engine.url}/v1/load_lora_adapter", json=load, timeout=120).raise_for_status()
            for model in (*paths, BASE_NAME):
                for size, prompts in (("long", LONG_PROMPTS), ("short", SHORT_PROMPTS)):
                    results[ops, model, size] = greedy_logprobs(engine.url, model, prompts)
    compared = sum(compare(ours, results["vllm", model, size], 0.1)
                   for (ops, model, size), ours in results.items() if ops == "loraplane")  # fmt: skip
    assert compared >= 24, f"only {compared} tokens compared: the runs diverged early"
    for name in paths:  # the adapters really move the numbers, far beyond that tolerance
        runs = [(results["loraplane", name, size], results["loraplane", BASE_NAME, size]) for size in ("long", "short")]
        pairs = [
            (a, b) for ours, base in runs for o, bs in zip(ours, base, strict=True) for a, b in zip(o, bs, strict=False)
        ]
        assert any(a[0] != b[0] or abs(a[1] - b[1]) > 0.5 for a, b in pairs), name
