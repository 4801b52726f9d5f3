"""Trainer throughput: our trainer vs Hugging Face `Trainer` + PEFT on the same work.

    .venv/bin/python benchmarks/train_throughput.py --out benchmarks/reports/train_throughput.json

Same base, same LoRA (r=16 q/k/v/o, adapter weights fp32), same tokenized examples (our chat
template and completion-only labels), same batch size, max_seq_len, optimizer (AdamW), lr and step
count. Runs (`--kinds`): `ours` (our defaults), `ours-fp32` (ours forced to float32), `hf` (HF
Trainer + PEFT as a user gets it on CPU: float32) and `hf-bf16` (HF told to use bf16: bf16 base
weights and `bf16=True`). Each measurement runs in a fresh subprocess; the order rotates every
round, so no run always gets the warmer or the cooler machine. tokens/s counts real (non-padding)
tokens per second of training steps after one warm-up step. Peak memory: the process's peak RSS
during the training steps (Linux VmHWM, reset after loading) on CPU; torch.cuda.max_memory_allocated
on GPU.

Where ours differs (the levers): bf16 compute where the CPU has native bf16 (`model.precision:
auto`), batches grouped by length (less padding), and the LM head run only at the positions that
have a target (answers), instead of full [tokens x vocab] logits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


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


KINDS = {  # name: (trainer, model.precision, HF TrainingArguments.bf16)
    "ours": ("ours", "auto", False),  # our defaults: auto = bf16 where the CPU has AVX512-BF16/AMX
    "ours-fp32": ("ours", "fp32", False),  # the same, forced to float32 (what bf16 adds, side by side)
    "hf": ("hf", "fp32", False),  # HF Trainer + PEFT as a user gets it on CPU: float32
    "hf-bf16": ("hf", "bf16", True),  # HF Trainer + PEFT told to use bf16: bf16 base, bf16=True (autocast)
}


def overrides(args, precision: str) -> list[str]:
    return [
        "--base", args.base, "--models_dir", str(REPO / "models"), "--out_dir", "/tmp/loraplane-bench",
        "--data.train", str(REPO / args.data), "--data.eval", "null", "--data.max_seq_len", str(args.max_seq_len),
        "--train.batch_size", str(args.batch_size), "--train.max_steps", str(args.steps + 1),
        "--train.lr", "3e-4", "--train.warmup_ratio", "0", "--lora.r", "16", "--lora.alpha", "32",
        "--lora.target_modules", "[q_proj, k_proj, v_proj, o_proj]", "--publish.enabled", "false",
        "--model.precision", precision,
    ]  # fmt: skip


def run_ours(args, precision: str) -> dict:
    import torch

    from trainer.config import load_config
    from trainer.train import setup, train_step

    run = setup(load_config(None, overrides(args, precision)))
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
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": seconds, "peak_mb": peak_memory_mb(), "precision": _chosen(precision)}


def _chosen(precision: str) -> str:
    from trainer.model import choose_precision

    return choose_precision(precision).name


def run_hf(args, precision: str, bf16: bool) -> dict:
    """HF Trainer + PEFT on the same examples, with its default pad-to-longest batches."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from trainer.config import load_config
    from trainer.tokens import collate
    from trainer.train import setup

    run = setup(load_config(None, overrides(args, precision)))  # same tokenizer, examples and LoRA model
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
        dataloader_num_workers=0, bf16=bf16 or (torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
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
    seconds = time.perf_counter() - counted["start"]
    return {"tokens": tokens, "seconds": seconds, "peak_mb": peak_memory_mb(), "precision": precision}


def child(args) -> None:
    trainer, precision, bf16 = KINDS[args.child]
    result = run_ours(args, precision) if trainer == "ours" else run_hf(args, precision, bf16)
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
    """Medians over rounds, and each kind's ratio to HF Trainer's default (`hf`) per round."""
    median = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in results.items()}
    peak = {k: max(r["peak_mb"] for r in v) for k, v in results.items()}
    per_round = {
        k: [o["tokens_per_s"] / h["tokens_per_s"] for o, h in zip(v, results["hf"], strict=True)]
        for k, v in results.items()
        if k != "hf" and "hf" in results
    }
    ratio = {k: statistics.median(v) for k, v in per_round.items()}
    return {"median_tokens_per_s": median, "peak_mb": peak, "ratio_to_hf": ratio, "per_round_ratio_to_hf": per_round}


def report(args, results: dict[str, list[dict]], summary: dict) -> str:
    rows = "\n".join(
        f"| {kind} | {r['precision']} | {i + 1} | {r['tokens_per_s']:.0f} | {r['peak_mb']:.0f} | {r['load_avg']:.1f} |"
        for i in range(args.rounds)
        for kind in results
        for r in (results[kind][i],)
    )
    ratios = ", ".join(
        f"{k} {v:.2f}x ({', '.join(f'{x:.2f}' for x in summary['per_round_ratio_to_hf'][k])})"
        for k, v in summary["ratio_to_hf"].items()
    )
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    return f"""`benchmarks/train_throughput.py --steps {args.steps} --batch-size {args.batch_size} \
--max-seq-len {args.max_seq_len} --rounds {args.rounds}` on {machine()}, {when} UTC.

| run | precision | round | tokens/s (real tokens) | peak RSS during steps (MiB) | load avg after |
|---|---|---|---|---|---|
{rows}

Median per-round ratio to `hf`: {ratios}.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="data/demo/train.jsonl")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--out", type=Path, default=REPO / "runs/bench/train_throughput.json")
    parser.add_argument("--child", choices=list(KINDS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    kinds = args.kinds.split(",")
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for round_ in range(args.rounds):
        shift = round_ % len(kinds)  # rotate the order so no kind always runs first
        for kind in kinds[shift:] + kinds[:shift]:
            results[kind].append(measure(kind, args))
            r = results[kind][-1]
            print(
                f"round {round_ + 1} {kind:>9}: {r['tokens_per_s']:.0f} tokens/s, peak {r['peak_mb']:.0f} MiB",
                flush=True,
            )
    summary = summarize(results)
    text = report(args, results, summary)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    artifact = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine(), "results": results}
    args.out.write_text(json.dumps(artifact | {"summary": summary, "markdown": text}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
