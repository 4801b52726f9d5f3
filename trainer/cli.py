"""`loraplane train --config FILE [--section.key value ...]`: train, evaluate, publish.

    loraplane train --config configs/train/demo.yaml --train.max_steps 3 --publish.version v9
    loraplane train --config configs/train/demo.yaml --print-config     # show the resolved config

Any config key can be overridden with its dotted name (`--lora.r 8`, `--data.packing true`).
`--skip-bad-lines` is short for `--data.skip_bad_lines true`.
Exit codes: 0 ok, 2 bad input (one-line error on stderr), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from trainer.errors import TrainerError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraplane train",
        description="Train a LoRA/QLoRA adapter and publish it to the registry.",
        epilog="Every config key is a flag: --train.max_steps 3, --lora.r 8, --publish.version v2, ...",
    )
    parser.add_argument("--config", help="YAML file of config overrides (defaults live in trainer/config.py)")
    parser.add_argument("--skip-bad-lines", action="store_true", help="skip and count bad dataset lines")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: list[str]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args, rest = build_parser().parse_known_args(argv)
    try:
        from trainer.config import load_config

        if args.skip_bad_lines:
            rest += ["--data.skip_bad_lines", "true"]
        cfg = load_config(args.config, rest)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        from trainer.train import run_training

        summary = run_training(cfg)
    except TrainerError as exc:
        print(f"loraplane train: error: {exc}", file=sys.stderr)
        return 2
    ev = summary["eval"]
    if ev["value"] is not None:
        print(f"exact match {ev['value']:.3f} on {ev['n']} eval examples, eval loss {ev['eval_loss']:.4f}")
        others = {k: v for k, v in ev.get("metrics", {}).items() if k != "exact_match"}
        if others:
            print("generation metrics: " + ", ".join(f"{k} {v:.3f}" for k, v in others.items()))
    if summary.get("published"):
        print(f"published {summary['published']}")
    return 0
