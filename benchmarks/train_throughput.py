"""Trainer throughput: our trainer vs Hugging Face `Trainer` + PEFT on the same work.

    .venv/bin/python benchmarks/train_throughput.py                 # CPU: SmolLM2-135M, 2 rounds
    .venv/bin/python benchmarks/train_throughput.py --write-results # also update benchmarks/RESULTS.md

Same base, same LoRA (r=16 q/k/v/o fp32 on CPU), same tokenized examples (our chat template and
completion-only labels), same batch size, max_seq_len, optimizer (AdamW), lr and step count. Each
measurement runs in a fresh subprocess, ours and HF alternating, so neither gets a warmer machine.
tokens/s counts real (non-padding) tokens per second of training steps after one warm-up step.
Peak memory: the process's peak RSS during the training steps (Linux VmHWM, reset after loading)
on CPU; torch.cuda.max_memory_allocated on GPU.

Where ours differs (the levers): batches grouped by length (less padding), and the LM head run only
at the positions that have a target (answers), instead of full [tokens x vocab] logits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "RESULTS.md"
HEADING = "## Trainer throughput"


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (peak RSS) so loading is not counted."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def overrides(args) -> list[str]:
    return [
        "--base", args.base, "--models_dir", str(REPO / "models"), "--out_dir", "/tmp/loraplane-bench",
        "--data.train", str(REPO / args.data), "--data.eval", "null", "--data.max_seq_len", str(args.max_seq_len),
        "--train.batch_size", str(args.batch_size), "--train.max_steps", str(args.steps + 1),
        "--train.lr", "3e-4", "--train.warmup_ratio", "0", "--lora.r", "16", "--lora.alpha", "32",
        "--lora.target_modules", "[q_proj, k_proj, v_proj, o_proj]", "--publish.enabled", "false",
    ]  # fmt: skip


def run_ours(args) -> dict:
    import torch

    from trainer.config import load_config
    from trainer.train import setup, train_step

    run = setup(load_config(None, overrides(args)))
    run.model.train()
    train_step(run, 0)  # warm-up (allocator, kernels)
    reset_peak_rss()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tokens, started = 0, time.perf_counter()
    for step in range(1, args.steps + 1):
        tokens += train_step(run, step)[1]  # real (non-padding) tokens of the step
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {"tokens": tokens, "seconds": time.perf_counter() - started, "peak_mb": peak_memory_mb()}


def run_hf(args) -> dict:
    """HF Trainer + PEFT on the same examples, with its default pad-to-longest batches."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from trainer.config import load_config
    from trainer.tokens import collate
    from trainer.train import setup

    run = setup(load_config(None, overrides(args)))  # same tokenizer, examples and LoRA model
    examples = run.batches.examples
    counted = {"tokens": 0, "start_tokens": 0, "start": time.perf_counter()}

    class CountingTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counted["tokens"] += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    class Timer(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step == 1:  # after the warm-up step
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                reset_peak_rss()
                counted["start_tokens"], counted["start"] = counted["tokens"], time.perf_counter()

    training_args = TrainingArguments(
        output_dir="/tmp/loraplane-bench-hf", per_device_train_batch_size=args.batch_size,
        max_steps=args.steps + 1, learning_rate=3e-4, warmup_steps=0, lr_scheduler_type="cosine",
        logging_strategy="no", save_strategy="no", report_to=[], remove_unused_columns=False,
        dataloader_num_workers=0, bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        use_cpu=not torch.cuda.is_available(), seed=0,
    )  # fmt: skip
    trainer = CountingTrainer(
        model=run.peft_model, args=training_args, train_dataset=[{"idx": i} for i in range(len(examples))],
        data_collator=lambda feats: collate([examples[f["idx"]] for f in feats], run.tokenizer.pad_token_id),
        callbacks=[Timer()],
    )  # fmt: skip
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    tokens = counted["tokens"] - counted["start_tokens"]
    return {"tokens": tokens, "seconds": time.perf_counter() - counted["start"], "peak_mb": peak_memory_mb()}


def child(args) -> None:
    result = run_ours(args) if args.child == "ours" else run_hf(args)
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    print("RESULT " + json.dumps(result), flush=True)


def measure(kind: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--steps", str(args.steps), "--batch-size",
           str(args.batch_size), "--max-seq-len", str(args.max_seq_len), "--base", args.base,
           "--data", args.data]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{kind} run failed:\n{out.stderr[-3000:]}")
    # the machine may be shared: record how busy it was (1-minute load average) after the run
    return {**json.loads(lines[-1][len("RESULT ") :]), "load_avg": os.getloadavg()[0]}


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return f"{os.cpu_count()}-core {cpu} CPU"


def summarize(results: dict[str, list[dict]]) -> dict:
    best = {k: max(r["tokens_per_s"] for r in v) for k, v in results.items()}
    peak = {k: max(r["peak_mb"] for r in v) for k, v in results.items()}
    per_round = [o["tokens_per_s"] / h["tokens_per_s"] for o, h in zip(results["ours"], results["hf"], strict=True)]
    return {"tokens_per_s": best, "peak_mb": peak, "ratio": best["ours"] / best["hf"], "per_round_ratio": per_round}


def write_results(text: str) -> None:
    """Replace (or append) only our section of benchmarks/RESULTS.md."""
    current = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n"
    start = current.find(HEADING)
    if start < 0:
        RESULTS.write_text(current.rstrip() + "\n\n" + text)
        return
    end = current.find("\n## ", start + len(HEADING))
    RESULTS.write_text(current[:start] + text + (current[end + 1 :] if end >= 0 else ""))


def report(args, results: dict[str, list[dict]], summary: dict) -> str:
    rows = "\n".join(
        f"| {kind} | {i + 1} | {r['tokens_per_s']:.0f} | {r['peak_mb']:.0f} | {r['load_avg']:.1f} |"
        for i in range(args.rounds)
        for kind, r in (("ours", results["ours"][i]), ("HF Trainer + PEFT", results["hf"][i]))
    )  # fmt: skip
    return f"""{HEADING}

`benchmarks/train_throughput.py --steps {args.steps} --batch-size {args.batch_size} --max-seq-len {args.max_seq_len}`
on {machine()}, {time.strftime("%Y-%m-%d", time.gmtime())}. Base `{args.base}`, LoRA r=16 on q/k/v/o,
data `{args.data}`, {args.steps} timed steps after one warm-up step, each run a fresh process, alternating.

| trainer | round | tokens/s (real tokens) | peak memory during steps (MiB) | load avg after |
|---|---|---|---|---|
{rows}

Best of rounds: ours {summary["tokens_per_s"]["ours"]:.0f} tokens/s vs HF
{summary["tokens_per_s"]["hf"]:.0f}: **{summary["ratio"]:.2f}x**; peak memory ours
{summary["peak_mb"]["ours"]:.0f} MiB vs HF {summary["peak_mb"]["hf"]:.0f} MiB. Per-round ratios:
{", ".join(f"{r:.2f}x" for r in summary["per_round_ratio"])} (other jobs shared the cores: see load average).
Levers: length-grouped batches (less padding) and the LM head evaluated only at answer positions.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="data/demo/train.jsonl")
    parser.add_argument("--write-results", action="store_true", help="update our section of RESULTS.md")
    parser.add_argument("--child", choices=["ours", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results: dict[str, list[dict]] = {"ours": [], "hf": []}
    for round_ in range(args.rounds):
        for kind in ("ours", "hf") if round_ % 2 == 0 else ("hf", "ours"):
            results[kind].append(measure(kind, args))
            r = results[kind][-1]
            print(
                f"round {round_ + 1} {kind:>4}: {r['tokens_per_s']:.0f} tokens/s, peak {r['peak_mb']:.0f} MiB",
                flush=True,
            )
    summary = summarize(results)
    print(json.dumps(summary, indent=2))
    text = report(args, results, summary)
    print(text)
    if args.write_results:
        write_results(text)


if __name__ == "__main__":
    main()
