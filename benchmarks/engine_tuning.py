"""Tune the vLLM CPU engine on this machine: dtype and OpenMP thread binding, base model only,
each setting a fresh engine, measured in one run next to HF transformers `generate` (the
baseline ENVIRONMENT.md found faster than vLLM on 2 cores).

    .venv/bin/python benchmarks/engine_tuning.py   # writes runs/bench/engine_tuning.json
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import BASE_DIR, PROMPTS, REPO, exit_on_sigterm, free_port, stream_chat, write_result

from serving.config import load_config
from serving.engines.process import EngineProcess

BASE = "smollm2-135m-instruct"
BIND, RESERVED = "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"
# (label, dtype, one env per engine process). On 2 cores vLLM's `auto` binding reserves one core
# for its scheduler and runs the model's OpenMP threads on the other one only.
SETTINGS: list[tuple[str, str, list[dict[str, str]]]] = [
    ("float32, vLLM auto bind (1 core)", "float32", [{}]),
    ("bfloat16, vLLM auto bind (1 core)", "bfloat16", [{}]),
    ("float32, bind 0-1", "float32", [{BIND: "0-1"}]),
    ("bfloat16, bind 0-1", "bfloat16", [{BIND: "0-1"}]),
    ("bfloat16, vLLM auto, 0 reserved", "bfloat16", [{RESERVED: "0"}]),
    ("float32, nobind", "float32", [{BIND: "nobind"}]),
    ("bfloat16, nobind", "bfloat16", [{BIND: "nobind"}]),
    ("bfloat16, 2 processes x 1 core", "bfloat16", [{BIND: "0"}, {BIND: "1"}]),
]


def engine_rate(label: str, dtype: str, envs: list[dict[str, str]], args: argparse.Namespace) -> dict:
    """Start one engine per env (each a fresh process), then stream to them round robin."""
    slug = "".join(c if c.isalnum() else "_" for c in label)
    engines = []
    for i, env in enumerate(envs):
        overrides = {"engine.port": free_port(), "engine.dtype": dtype, "engine.env": env, "engine.cpu_bind": "vllm"}
        engine = EngineProcess(load_config(None, overrides), BASE_DIR, BASE, 0, REPO / "runs/bench/logs")
        engine.log_path = REPO / f"runs/bench/logs/tuning-{slug}-{i}.log"
        engines.append(engine)
    try:
        started = time.perf_counter()
        for engine in engines:
            engine.start()
        for engine in engines:
            engine.wait_healthy(900)
        startup = time.perf_counter() - started
        client = httpx.Client()
        urls = [engine.url for engine in engines]
        for url in urls:
            stream_chat(client, url, BASE, PROMPTS[0], 4)  # warm-up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            rows = list(
                pool.map(
                    lambda i: stream_chat(
                        client, urls[i % len(urls)], BASE, PROMPTS[i % len(PROMPTS)], args.max_tokens
                    ),
                    range(args.requests),
                )
            )
        concurrent = sum(r["tokens"] for r in rows) / (time.perf_counter() - t0)
        single = stream_chat(client, urls[0], BASE, PROMPTS[1], args.max_tokens)
        return {
            "setting": label,
            "processes": len(engines),
            "startup_s": startup,
            "tok_s_16_streams": concurrent,
            "tok_s_1_stream": single["tokens"] / single["e2e_s"],
            "ttft_1_stream_s": single["ttft_s"],
        }
    finally:
        for engine in engines:
            engine.stop()


def hf_generate_rate(batch: int, max_tokens: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(BASE_DIR, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32).eval()
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in PROMPTS[:batch]
    ]
    ids = tok(texts, return_tensors="pt", padding=True)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
    return batch * (out.shape[1] - ids["input_ids"].shape[1]) / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "runs/bench/engine_tuning.json")
    args = parser.parse_args()
    exit_on_sigterm()
    rows = [engine_rate(label, dtype, envs, args) for label, dtype, envs in SETTINGS]
    hf = {
        "hf_generate_fp32_batch16_tok_s": hf_generate_rate(16, args.max_tokens),
        "hf_generate_fp32_batch1_tok_s": hf_generate_rate(1, args.max_tokens),
    }
    result = {"vllm": rows, "hf": hf}
    return write_result(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
