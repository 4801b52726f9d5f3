"""vLLM multi-LoRA on this machine, measured in one run:

1. output tok/s with 8 distinct rank-16 adapters mixed vs base only (16 concurrent streams),
   alternated A/B/A/B so drift hits both alike;
2. adapter hot-load: time to first token through the gateway for each adapter's first request
   (load + first token) vs the same adapter once loaded;
3. gateway overhead vs calling vLLM directly: TTFT and end-to-end, p50/p99, interleaved;
4. vLLM multi-LoRA vs a naive PEFT server (HF transformers + PEFT, one request at a time,
   `set_adapter` per request, adapters preloaded, float32), same 8 adapters and requests (S-LoRA's
   comparison); and vs the fairer PEFT baseline: each adapter's requests in one batched `generate`,
   in the engine's dtype (bf16 where vLLM runs bf16).

`--targets attention` (q/k/v/o, default) or `attention+mlp` (also gate/up/down: the demo's v2 shape).

    .venv/bin/python benchmarks/multi_lora.py --dtype auto   # writes runs/bench/multi_lora.json
    .venv/bin/python benchmarks/multi_lora.py --targets attention+mlp --out runs/bench/multi_lora-mlp.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import (
    BASE_DIR,
    PROMPTS,
    REPO,
    exit_on_sigterm,
    free_port,
    make_bench_adapters,
    percentile,
    shown_args,
    stream_chat,
    write_result,
)

from fakes.servers import ServerThread
from serving.config import load_config
from serving.engines.process import EngineProcess, choose_dtype

BASE = "smollm2-135m-instruct"


def throughput(url: str, models: list[str], n_requests: int, concurrency: int, max_tokens: int) -> float:
    client = httpx.Client()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        rows = list(
            pool.map(
                lambda i: stream_chat(client, url, models[i % len(models)], PROMPTS[i % len(PROMPTS)], max_tokens),
                range(n_requests),
            )
        )
    return sum(r["tokens"] for r in rows) / (time.perf_counter() - started)


def bench_vllm(args: argparse.Namespace, adapters: list[str], registry: Path) -> dict:
    cfg = load_config(
        None,
        {
            "registry.adapters_dir": str(registry),
            "engine.port": free_port(),
            "gateway.port": free_port(),
            "engine.dtype": args.dtype,
            "engine.max_loras": 8,
            "engine.max_cpu_loras": 16,
            "engine.cpu_lora_ops": args.lora_ops,
        },
    )
    engine = EngineProcess(cfg, BASE_DIR, BASE, 0, REPO / "runs/bench/logs")
    out: dict = {"dtype": choose_dtype(args.dtype), "cpu_lora_ops": args.lora_ops}
    from serving.gateway.app import create_app

    with engine.running(900), ServerThread(create_app(cfg, [engine.url]), cfg.gateway.port) as gateway:
        gw = gateway.url
        client = httpx.Client()
        # 2. hot-load TTFT through the gateway: each adapter's first request (load + first token),
        # then the same request once it is loaded
        cold, warm = [], []
        for name in adapters:
            cold.append(stream_chat(client, gw, name, PROMPTS[0], 8)["ttft_s"])
            warm.append(stream_chat(client, gw, name, PROMPTS[0], 8)["ttft_s"])
        out["hotload"] = {
            "cold_ttft_s": cold,
            "warm_ttft_s": warm,
            "cold_ttft_ms_median": 1000 * percentile(cold, 50),
            "cold_ttft_ms_max": 1000 * max(cold),
            "added_by_load_ms_median": 1000 * (percentile(cold, 50) - percentile(warm, 50)),
        }
        # 1. base-only vs 8 adapters mixed, alternated
        base_rates, mixed_rates = [], []
        for _ in range(args.rounds):
            base_rates.append(throughput(engine.url, [BASE], args.requests, 16, args.max_tokens))
            mixed_rates.append(throughput(engine.url, adapters, args.requests, 16, args.max_tokens))
        out["throughput"] = {
            "base_tok_s": base_rates,
            "mixed8_tok_s": mixed_rates,
            "ratio": sum(mixed_rates) / sum(base_rates),
        }
        # 3. gateway vs direct, interleaved, one request at a time
        direct, via = [], []
        for i in range(args.pairs):
            direct.append(stream_chat(client, engine.url, BASE, PROMPTS[i % len(PROMPTS)], 16))
            via.append(stream_chat(client, gw, BASE, PROMPTS[i % len(PROMPTS)], 16))
        out["gateway_vs_direct"] = {
            key: {
                q: {
                    "direct_ms": 1000 * percentile([r[key] for r in direct], p),
                    "gateway_ms": 1000 * percentile([r[key] for r in via], p),
                }
                for q, p in (("p50", 50), ("p99", 99))
            }
            for key in ("ttft_s", "e2e_s")
        }
        out["vllm_mixed_sequential_tok_s"] = throughput(engine.url, adapters, args.naive_requests, 1, args.max_tokens)
        out["vllm_mixed_concurrent_tok_s"] = throughput(
            engine.url, adapters, args.naive_requests * 2, 16, args.max_tokens
        )
    return out


def bench_naive_peft(args: argparse.Namespace, adapter_dirs: list[Path]) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(BASE_DIR)
    model = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dirs[0], adapter_name="a0")
    for i, path in enumerate(adapter_dirs[1:], start=1):
        model.load_adapter(path, adapter_name=f"a{i}")
    model.eval()
    tokens, started = 0, time.perf_counter()
    for i in range(args.naive_requests):
        model.set_adapter(f"a{i % len(adapter_dirs)}")
        text = tok.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=args.max_tokens, min_new_tokens=args.max_tokens, do_sample=False)
        tokens += out.shape[1] - ids["input_ids"].shape[1]
    return {"naive_peft_tok_s": tokens / (time.perf_counter() - started), "dtype": "float32"}


def bench_peft_batched(args: argparse.Namespace, adapter_dirs: list[Path], dtype: str) -> dict:
    """The fairer PEFT baseline: the same requests as vLLM's concurrent run, grouped by adapter, each
    adapter's group in one left-padded `generate` batch, in the engine's dtype."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(BASE_DIR, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(model, adapter_dirs[0], adapter_name="a0")
    for i, path in enumerate(adapter_dirs[1:], start=1):
        model.load_adapter(path, adapter_name=f"a{i}")
    model.eval()
    n = args.naive_requests * 2  # as many as vllm_mixed_concurrent_tok_s
    groups: dict[int, list[str]] = {}
    for i in range(n):
        chat = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        groups.setdefault(i % len(adapter_dirs), []).append(
            tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        )
    tokens, started = 0, time.perf_counter()
    for adapter, texts in groups.items():
        model.set_adapter(f"a{adapter}")
        ids = tok(texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=args.max_tokens, min_new_tokens=args.max_tokens, do_sample=False)
        tokens += (out.shape[1] - ids["input_ids"].shape[1]) * len(texts)
    elapsed = time.perf_counter() - started
    return {
        "peft_batched_tok_s": tokens / elapsed,
        "dtype": dtype,
        "requests": n,
        "batch_per_adapter": n // len(groups),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--lora-ops", default="loraplane", choices=["loraplane", "vllm"], help="CPU LoRA ops")
    parser.add_argument("--skip-naive", action="store_true", help="reuse --naive-from's naive PEFT result")
    parser.add_argument("--naive-from", type=Path, help="a previous result file holding the naive PEFT run")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--naive-requests", type=int, default=16)
    parser.add_argument("--targets", default="attention", choices=["attention", "attention+mlp"])
    parser.add_argument("--out", type=Path, default=REPO / "runs/bench/multi_lora.json")
    args = parser.parse_args()
    exit_on_sigterm()
    registry = REPO / "runs/bench/adapters"
    dirs = make_bench_adapters(registry, 8, targets=args.targets)
    names = [f"{p.parent.name}@v1" for p in dirs]
    result = {"args": shown_args(args)}
    result["vllm"] = bench_vllm(args, names, registry)
    if args.skip_naive and args.naive_from:
        result["naive"] = json.loads(args.naive_from.read_text())["naive"] | {"from": str(args.naive_from)}
    else:
        result["naive"] = bench_naive_peft(args, dirs)
    result["peft_batched"] = bench_peft_batched(args, dirs, result["vllm"]["dtype"])
    result["vllm_vs_naive"] = {
        "sequential": result["vllm"]["vllm_mixed_sequential_tok_s"] / result["naive"]["naive_peft_tok_s"],
        "concurrent": result["vllm"]["vllm_mixed_concurrent_tok_s"] / result["naive"]["naive_peft_tok_s"],
    }
    # vLLM 16 concurrent streams vs PEFT batching one adapter's requests, same dtype, same requests
    result["vllm_vs_peft_batched"] = (
        result["vllm"]["vllm_mixed_concurrent_tok_s"] / result["peft_batched"]["peft_batched_tok_s"]
    )
    result["targets"] = args.targets
    return write_result(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
