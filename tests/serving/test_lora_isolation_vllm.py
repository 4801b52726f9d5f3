"""A base-model request must not pick up an adapter's delta when it shares a batch with one.

vLLM's CPU LoRA ops index the adapter slots with each token's slot number; a token without an
adapter has slot -1, which Python indexing reads as the last slot (vLLM skips the ops only for a
batch of one base request). When the last slot holds an adapter of the same batch, the base
sequences run with that adapter applied (measured in-process, max_loras 1: one prompt's cumulative
log-probability moved from -2.726 to -2.857). loraplane_vllm/cpu_lora.py, the vLLM plugin
`loraplane serve` enables, gives those tokens no delta. The first test runs a real engine with one
slot and compares like with like: base requests decoded beside a long adapter request against the
same base requests decoded beside a long base request, i.e. in batches of the same shape.
Run it with LORAPLANE_TEST_CPU_LORA_OPS=vllm to see vLLM's own ops fail it.

The second test checks the plugin's fused add_lora_linear against vLLM's own ops through two real
engines: same greedy tokens and log-probabilities for adapter requests of two ranks.

Numerics (why the bounds hold on any CPU kind, tests/cpu_kind.py): oneDNN picks its matmul kernel
by ISA (AVX2, AVX-512, AVX512-BF16, AMX) and by batch shape, and kernels of one ISA sum in another
order at another shape, so the same base request alone and in a batch of three rows may differ in
the last bf16 bit of any activation (seen on AMX: up to 0.033 in a log-probability). Equal shapes
run the same kernels on the same rows; a GEMM row does not depend on the other rows' values.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving.engines.process import EngineProcess
from tests.conftest import BASE_NAME, REPO, free_port
from tests.cpu_kind import cpu_kind

pytestmark = pytest.mark.slow


PROMPTS = ["The capital of France is", "Write a haiku about the sea:"]  # under 16 tokens with 6 new:
# no full KV block, so vLLM's prefix cache cannot hand the second run the first run's numbers

# Base rows beside an adapter row get an exact zero from our ops (their mask block is 0), and the
# same shapes run the same kernels: the two runs agree to the bit on any CPU kind. The bound only
# allows for the JSON round trip of a float; a leak of the random adapter moves them by ~1 nat.
SAME_SHAPE_TOL = 1e-6
# ~23 KB of bf16 KV per token (30 layers x 2 x 3 KV heads x 64): 512 MiB holds ~11k tokens (fp32: half),
# far more than these requests need, and leaves memory to the other jobs of a shared machine.
KV_CACHE_BYTES = 512 * 1024**2
REQUEST_TIMEOUT_S = 600  # a shared 2-core machine under load decodes a few tokens a second


@pytest.fixture(scope="module")
def engine_config(tmp_path_factory: pytest.TempPathFactory):
    """Serving config for engines of our own: these tests load their own random adapters, so they
    need none of the session's trained ones (training them takes minutes on a loaded machine)."""
    from serving.config import load_config

    adapters = tmp_path_factory.mktemp("no-adapters")
    overrides = {"registry.models_dir": str(REPO / "models"), "registry.adapters_dir": str(adapters)}
    engine = {"engine.port": free_port(), "engine.max_cpu_loras": 4, "engine.kv_cache_memory_bytes": KV_CACHE_BYTES}
    return load_config(None, overrides | engine)


def probe_beside(url: str, long_model: str) -> list[list[tuple[str, float, dict[str, float]]]]:
    """Each base prompt as a request of its own (one sequence: its prefill and every decode step
    have one shape, whatever the scheduler does), while `long_model` decodes a long request."""
    decoding, stop = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(stream_until, url, long_model, decoding, stop)
        assert decoding.wait(REQUEST_TIMEOUT_S), "the long request never started decoding"
        probes = [greedy_logprobs(url, BASE_NAME, [prompt], max_tokens=6)[0] for prompt in PROMPTS]
        assert not running.done(), "the long request ended before the probes did"
        stop.set()
        running.result()
    return probes


def stream_until(url: str, model: str, decoding: threading.Event, stop: threading.Event) -> None:
    """A long streamed request: sets `decoding` at its second token, disconnects once `stop` is set
    (vLLM aborts a request whose client went away)."""
    body = {"model": model, "prompt": PROMPTS[0], "max_tokens": 1500, "temperature": 0, "ignore_eos": True,
            "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=REQUEST_TIMEOUT_S) as response:
        response.raise_for_status()
        for chunks, _ in enumerate(response.iter_lines()):
            if chunks >= 2:
                decoding.set()
            if stop.is_set():
                return
    raise AssertionError("the long request finished before the probes did")


def test_base_requests_get_no_adapter_delta_beside_an_adapter_request(engine_config, base_dir, tmp_path):
    adapter = random_adapter(base_dir, tmp_path / "r16", 16, seed=0)  # moves logits by nats: a leak shows
    cfg = engine_config.model_copy(deep=True)
    cfg.engine.port = free_port()
    cfg.engine.dtype = engine_dtype()
    cfg.engine.max_loras, cfg.engine.max_cpu_loras = 1, 1  # the adapter sits in the last (only) slot
    cfg.engine.cpu_lora_ops = os.environ.get("LORAPLANE_TEST_CPU_LORA_OPS", "loraplane")
    with EngineProcess(cfg, base_dir, BASE_NAME, 0, tmp_path).running(600) as engine:
        beside_base = probe_beside(engine.url, BASE_NAME)  # before any adapter: its slot is all zeros
        load_adapter(engine.url, "r16", adapter)
        beside_adapter = probe_beside(engine.url, "r16")
    deviation = max_deviation(beside_adapter, beside_base)
    print(f"\nnumerics: base beside adapter vs beside base, same shapes: max |d logprob| {deviation:.3g}"
          f" (bound {SAME_SHAPE_TOL:g}; dtype {cfg.engine.dtype}; {cpu_kind().describe()})")  # fmt: skip
    compared = compare(beside_adapter, beside_base, SAME_SHAPE_TOL)
    assert compared == 12, "base tokens changed beside an adapter request (an adapter delta leaked into them)"


def load_adapter(url: str, name: str, path) -> None:  # noqa: ANN001
    load = {"lora_name": name, "lora_path": str(path)}
    httpx.post(f"{url}/v1/load_lora_adapter", json=load, timeout=REQUEST_TIMEOUT_S).raise_for_status()


def engine_dtype() -> str:
    """bf16 where the CPU computes it natively (AVX512-BF16 or AMX) and oneDNN may use AVX-512,
    float32 elsewhere (what `engine.dtype: auto` picks; under ONEDNN_MAX_CPU_ISA=AVX2 vLLM's oneDNN
    has no bf16 matmul at all, so a capped run takes float32 as an AVX2-only machine does)."""
    return "bfloat16" if cpu_kind().bf16_kernels else "float32"


# The long batch (~90 prompt tokens) takes loraplane_vllm.cpu_lora's per-slice expand in its
# prefill, the short one (~16 tokens) and every decode step of two sequences its block-diagonal one.
LONG_PROMPTS = [
    "Extract the fields as JSON. Order 1182 from Dana Whitfield, shipped to Leeds on 3 March: two "
    "blue kettles at 24 pounds each and one toaster at 31 pounds, paid by card. JSON:",
    "Extract the fields as JSON. Booking for Marcus Oyelaran, room 214, arriving 12 June and leaving "
    "15 June, breakfast included, late check-in after 22:00 requested by phone. JSON:",
]
SHORT_PROMPTS = ["The capital of France is", "Write a haiku about the sea:"]


def greedy_logprobs(url: str, model: str, prompts: list[str], max_tokens: int = 8) -> list[list[tuple]]:
    """Per prompt, per generated token: (token, its log-probability, top-5 alternatives)."""
    body = {"model": model, "prompt": prompts, "max_tokens": max_tokens, "temperature": 0, "logprobs": 5}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=REQUEST_TIMEOUT_S)
    choices = response.raise_for_status().json()["choices"]
    choices.sort(key=lambda c: c["index"])
    rows = [(c["logprobs"]["tokens"], c["logprobs"]["token_logprobs"], c["logprobs"]["top_logprobs"]) for c in choices]
    return [list(zip(*row, strict=True)) for row in rows]


def compare(ours: list, theirs: list, tol: float) -> int:
    """Same greedy tokens with log-probabilities within `tol`, up to a near-tie: where the runs pick
    different tokens, ours must rate theirs within 2*tol of its own pick (each run's rounding may
    pick either of two candidates that close), and the sequences are compared no further (they
    continue from different text). Returns the tokens compared."""
    compared = 0
    for our_seq, their_seq in zip(ours, theirs, strict=True):
        for (token, logprob, top), (their_token, their_logprob, _) in zip(our_seq, their_seq, strict=True):
            if token != their_token:
                gap = logprob - top.get(their_token, float("-inf"))
                assert gap <= 2 * tol, f"picked {token!r} ({logprob:.4f}), the other run {their_token!r}: {top}"
                break
            assert abs(logprob - their_logprob) <= tol, f"{token!r}: {logprob:.4f} vs {their_logprob:.4f}, bound {tol}"
            compared += 1
    return compared


def max_deviation(ours: list, theirs: list) -> float:
    """The largest log-probability difference over the tokens both runs picked alike (up to the first
    divergence of each sequence): what the report lines print against each bound."""
    worst = 0.0
    for our_seq, their_seq in zip(ours, theirs, strict=True):
        for (token, logprob, _), (their_token, their_logprob, _) in zip(our_seq, their_seq, strict=True):
            if token != their_token:
                break
            worst = max(worst, abs(logprob - their_logprob))
    return worst


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


# Bounds for ours vs vLLM's ops, same requests, same batch shapes. The two differ only in the order
# of the additions inside the LoRA GEMMs and where results are rounded (vLLM: per slice and per
# token; ours: one GEMM over every slice and adapter), never in what they add.
# float32: unit roundoff 2^-24; a reordered sum of n terms moves by ~sqrt(n) units (n <= 1536, the
# MLP width), at most a few per layer: ~2e-6 relative per layer, 30 layers, logits |z| < 40 here
# -> ~2.4e-3 in a log-probability even if every layer's error added up; 0.02 leaves room and holds
# on any kind (fp32 matmuls run fp32 FMAs on AVX2, AVX-512 and AMX machines alike: AMX tiles are
# bf16/int8 only). A wrong op (wrong adapter block, scale, slice) moves them by > 0.5.
# bf16: logits come out of the LM head as bf16, 8 significant bits: between 16 and 32 (this
# model's top logits with these adapters: 13-38, measured) they are 0.125 apart, above 32 0.25.
# Two correct computations whose hidden states differ in one rounding can land one spacing apart
# in the picked logit and in the log-sum-exp: 2 x 0.25 = 0.5 (seen on AMX: 0.108). The fp32 run
# is the tight check of the arithmetic; the bf16 run checks the served dtype's code paths.
OPS_TOL = {"float32": 0.02, "bfloat16": 0.5}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_our_ops_give_vllms_numbers_for_adapter_requests(engine_config, base_dir, tmp_path, dtype):
    """The fused ops against vLLM's own (right when every token has an adapter): two adapters of
    different ranks (16 and 8) resident, each requested with a two-prompt batch, long and short.
    bf16 only where the CPU has native bf16 kernels (tests/cpu_kind.py): elsewhere the engine
    serves float32 (engine.dtype auto), and under ONEDNN_MAX_CPU_ISA=AVX2 vLLM cannot run bf16."""
    if dtype == "bfloat16" and not cpu_kind().bf16_kernels:
        pytest.skip(f"no native bf16 kernels here: {cpu_kind().describe()}")
    paths = {f"r{r}": random_adapter(base_dir, tmp_path / f"r{r}", r, seed) for seed, r in enumerate((16, 8))}
    results = {}
    for ops in ("vllm", "loraplane"):
        cfg = engine_config.model_copy(deep=True)
        cfg.engine.port = free_port()
        cfg.engine.cpu_lora_ops, cfg.engine.dtype = ops, dtype
        with EngineProcess(cfg, base_dir, BASE_NAME, 0, tmp_path / ops).running(600) as engine:
            for name, path in paths.items():
                load_adapter(engine.url, name, path)
            for model in (*paths, BASE_NAME):
                for size, prompts in (("long", LONG_PROMPTS), ("short", SHORT_PROMPTS)):
                    results[ops, model, size] = greedy_logprobs(engine.url, model, prompts)
    ours = {key[1:]: value for key, value in results.items() if key[0] == "loraplane"}
    theirs = {key[1:]: value for key, value in results.items() if key[0] == "vllm"}
    deviation = max(max_deviation(value, theirs[key]) for key, value in ours.items())
    print(f"\nnumerics: our ops vs vLLM's, {dtype}: max |d logprob| {deviation:.3g} (bound {OPS_TOL[dtype]}; "
          f"{cpu_kind().describe()})")  # fmt: skip
    compared = sum(compare(value, theirs[key], OPS_TOL[dtype]) for key, value in ours.items())
    assert compared >= 24, f"only {compared} tokens compared: the runs diverged early"
    for name in paths:  # the adapters really move the numbers, far beyond the bf16 bound
        runs = [(ours[name, size], ours[BASE_NAME, size]) for size in ("long", "short")]
        pairs = [
            (a, b) for mine, base in runs for o, bs in zip(mine, base, strict=True) for a, b in zip(o, bs, strict=False)
        ]
        assert any(a[0] != b[0] or abs(a[1] - b[1]) > 2 * OPS_TOL["bfloat16"] for a, b in pairs), name
