"""The KTO proof: thumbs on v1's own answers train a version that beats v1 on held-out prompts.

    .venv/bin/python benchmarks/kto_proof.py [--runs runs/bench/kto] [--v1-steps 10] [--prompts 160]

1. A weak v1: configs/train/demo.yaml cut to --v1-steps steps, published as demo-json v1 in
   RUNS/adapters (skipped when it is there).
2. Thumbs: v1's greedy answers to the first --prompts TRAIN prompts (never held-out ones), each
   labelled by exact match against the reference answer -> RUNS/ratings.jsonl (the rows of
   data/demo/kto-train.jsonl). Empty answers are not rated (a rated row needs a completion).
3. KTO from v1: configs/train/demo-kto.yaml on those ratings, the loss weights set so that
   desirable_weight * n_good = undesirable_weight * n_bad (the KTO paper's balance); its final eval
   scores data/demo/heldout.jsonl with the trainer's own code, as v1's did.
Report: benchmarks/reports/kto-DATE.json (v1's and KTO's held-out exact match, the rating counts,
wall times, load average). Every training run is the real `loraplane train`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.train_methods import machine, train  # noqa: E402

HELDOUT, TRAIN = "data/demo/heldout.jsonl", "data/demo/train.jsonl"


def greedy_answers(adapter: Path, conversations: list[list[dict]]) -> list[str]:
    """The adapter's greedy answers (48 new tokens, stripped) to the conversations' prompts."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.evaluation.scoring import greedy_replies
    from trainer.model import load_tokenizer

    base_dir = REPO / "models" / "smollm2-135m-instruct"
    tokenizer = load_tokenizer(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), str(adapter))
    return [r.strip() for r in greedy_replies(model, tokenizer, [c[:-1] for c in conversations], 16, 48, "cpu")]


def rated_rows(conversations: list[list[dict]], answers: list[str]) -> list[dict]:
    """KTO rows, label = exact match against the reference; empty answers are not rated."""
    return [
        {"prompt": c[:-1], "completion": a, "label": a == c[-1]["content"]}
        for c, a in zip(conversations, answers, strict=True)
        if a
    ]


def rate_answers(v1: Path, n_prompts: int) -> list[dict]:
    """v1's greedy answers to the first n TRAIN prompts as KTO rows, label = exact match."""
    from trainer.data import load_dataset_file

    conversations = load_dataset_file(str(REPO / TRAIN)).conversations[:n_prompts]
    return rated_rows(conversations, greedy_answers(v1, conversations))


def balanced_weights(good: int, bad: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) with desirable_weight * good == undesirable_weight * bad."""
    if good == 0 or bad == 0:
        return 1.0, 1.0
    return (bad / good, 1.0) if good < bad else (1.0, good / bad)


def main(runs: Path, v1_steps: int = 10, n_prompts: int = 160, extra: tuple[str, ...] = ()) -> None:
    adapters, report = runs / "adapters", {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
    report["loadavg_1min"] = {"start": os.getloadavg()[0]}
    v1 = adapters / "demo-json" / "v1"
    if not v1.is_dir():
        train("configs/train/demo.yaml", runs / "v1", adapters, "--train.max_steps", str(v1_steps))
    report["v1"] = {"steps": v1_steps, "eval": json.loads((v1 / "loraplane-adapter.json").read_text())["eval"]}
    ratings = runs / "ratings.jsonl"
    if not ratings.is_file():
        started = time.perf_counter()
        rows = rate_answers(v1, n_prompts)
        ratings.write_text("".join(json.dumps(r) + "\n" for r in rows))
        report["rating_wall_s"] = round(time.perf_counter() - started, 1)
    labels = [json.loads(line)["label"] for line in ratings.read_text().splitlines()]
    good, bad = sum(labels), len(labels) - sum(labels)
    dw, uw = balanced_weights(good, bad)
    report["ratings"] = {"prompts": n_prompts, "rows": len(labels), "thumbs_up": good, "thumbs_down": bad}
    flags = [
        "--data.train",
        str(ratings),
        "--kto.desirable_weight",
        f"{dw:.4f}",
        "--kto.undesirable_weight",
        f"{uw:.4f}",
    ]
    report["kto_flags"] = flags[2:] + list(extra)
    report["kto"] = train(
        "configs/train/demo-kto.yaml", runs / "kto", adapters, *flags, "--publish.enabled", "false", *extra
    )
    report["loadavg_1min"]["end"] = os.getloadavg()[0]
    v1_em, kto_em = report["v1"]["eval"]["value"], report["kto"]["eval"]["value"]
    report["target"] = {"kto_exact_match": kto_em, "v1_exact_match": v1_em, "met": kto_em > v1_em}
    path = REPO / "benchmarks" / "reports" / f"kto-{report['date']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["target"], indent=2), f"\nwrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/bench/kto", help="out dirs and the adapter registry go here")
    parser.add_argument("--v1-steps", type=int, default=10, help="SFT steps of the weak v1 (demo.yaml trains 30)")
    parser.add_argument("--prompts", type=int, default=160, help="train prompts whose v1 answers get rated")
    args, rest = parser.parse_known_args()
    main(REPO / args.runs, args.v1_steps, args.prompts, tuple(rest))  # rest: extra `loraplane train` flags for KTO
