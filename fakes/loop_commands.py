"""Stand-ins for the commands `loraplane loop` runs (`feedback export`, `train`, `eval`), taking the
same arguments, for the loop's tests: they write what the real ones write (an export's files and
manifest, a published adapter version, eval.json) quickly, and inject faults (a train that hangs
until killed, a bad-input exit, gate scores chosen by the test). Fake-only options come before the
real ones: `python -m fakes.loop_commands train --hang-first MARKER --config ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


def export(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=30)  # fake: kto rows to write
    p.add_argument("--pairs", type=int, default=0)  # fake: preference rows to write
    for flag in ("--url", "--adapter", "--since", "--until"):
        p.add_argument(flag)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    kto = [
        {"prompt": [{"role": "user", "content": f"q{i}"}], "completion": "a", "label": i % 2 == 0}
        for i in range(args.rows)
    ]
    files = {
        "kto.jsonl": kto,
        "preferences.jsonl": [{"prompt": "q", "chosen": "a", "rejected": "b"}] * args.pairs,
        "sft.jsonl": [],
    }
    for name, rows in files.items():
        (args.out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = {"source": {"adapter": args.adapter}, "window": [args.since, args.until]}
    manifest["files"] = {name: {"rows": len(rows)} for name, rows in files.items()}
    (args.out / "manifest.json").write_text(json.dumps(manifest))
    return 0


def train(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--hang-first", type=Path)  # fake: if this file does not exist, create it and hang
    p.add_argument("--exit", type=int, default=0)  # fake: exit with this code (2: bad input) at once
    p.add_argument("--config")
    p.add_argument("--out_dir", type=Path, required=True)
    for key in ("--lora.init_from", "--publish.name", "--publish.version", "--publish.adapters_dir"):
        p.add_argument(key, required=True)
    args, _ = p.parse_known_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=False)  # the loop gives every attempt a fresh dir
    if args.exit:
        print("loraplane train: error: data.train line 3: `label` must be true or false", file=sys.stderr)
        return args.exit
    if args.hang_first is not None and not args.hang_first.exists():
        args.hang_first.write_text(str(os.getpid()))
        (args.out_dir / "checkpoint-partial").write_text("half")
        time.sleep(600)  # killed by the test
    name, parent = args.__dict__["lora.init_from"].split("@")
    root = Path(args.__dict__["publish.adapters_dir"]) / args.__dict__["publish.name"]
    version = args.__dict__["publish.version"]
    tmp = root / f".tmp-{version}-fake"
    shutil.copytree(root / parent, tmp)
    manifest = json.loads((tmp / "loraplane-adapter.json").read_text())
    (tmp / "loraplane-adapter.json").write_text(json.dumps({**manifest, "version": version, "parent": parent}))
    os.replace(tmp, root / version)  # atomic, as the real publisher
    (args.out_dir / "published").write_text(f"{name}@{version}")
    return 0


def evaluate(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--scores", default="0.5,0.5")  # fake: the metric for each --model, in order
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--metrics", default="exact_match")
    p.add_argument("--out", type=Path, required=True)
    args, _ = p.parse_known_args(argv)
    scores = [float(s) for s in args.scores.split(",")]
    models = {m: {"n": 10, args.metrics: s} for m, s in zip(args.model, scores, strict=True)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps({"models": models}))
    return 0


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    sys.exit({"export": export, "train": train, "eval": evaluate}[command](rest))
