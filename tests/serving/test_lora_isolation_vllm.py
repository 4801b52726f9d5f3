"""A base-model request must not pick up an adapter's delta when it shares a batch with one.

vLLM's CPU LoRA ops index the adapter slots with each token's slot number; a token without an
adapter has slot -1, which Python indexing reads as the last slot (vLLM skips the ops only for a
batch of one base request). When the last slot holds an adapter of the same batch, the base
sequences run with that adapter applied (measured in-process, max_loras 1: one prompt's cumulative
log-probability moved from -2.726 to -2.857). loraplane_vllm/cpu_lora.py, the vLLM plugin
`loraplane serve` enables, gives those tokens no delta. This test runs a real engine with one slot
and checks that a base batch beside a running adapter request has the same log-probabilities as alone.
Run it with LORAPLANE_TEST_CPU_LORA_OPS=vllm to see vLLM's own ops fail it.
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
