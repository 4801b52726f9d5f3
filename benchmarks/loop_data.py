"""What the demo's loop can learn from its users' ratings: the loop step replayed offline.

    .venv/bin/python benchmarks/loop_data.py [--adapters adapters] [--raters 100] [--lr 6e-4] [--steps 12]

1. The demo's raters (loraplane/demo_loop.py: `population(100, 96, seed=21)`, `traffic(seed=22)`,
   sticky, heavy-tailed, partial rating) ask the stable version (demo-json v2 in --adapters) about
   data/demo/live.jsonl; answers are greedy, as the demo's users' (temperature 0), so one prompt gets
   one answer and the feedback export holds one row per distinct rated prompt (label = exact match).
2. KTO from v2 on those rows with the loop's settings (configs/train/demo-kto.yaml plus the overrides of
   configs/loop/demo-json.yaml: 12 steps, lr 6e-4 unless given), scored on the golden (held-out) set
   by the trainer's own final eval, as the loop's gate scores it.
   With --corrections P, a share P of the thumbs-down answers also carry the user's correction (what
   the answer should have been: the reference), exported as a desirable row beside the undesirable
   answer (serving/rollouts/export.py), as `POST /v1/feedback {"correction": ...}` gives the loop.
3. The misses of v2 and of the KTO version by the golden prompt's city: the cities whose right
   spelling never appears among v2's rated answers stay wrong (a thumbs-down says what is wrong, not
   what is right).
Report: benchmarks/reports/loop-data-DATE.json. Every training run is the real `loraplane train`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.kto_proof import greedy_answers, rated_rows  # noqa: E402
from benchmarks.train_methods import machine, train  # noqa: E402
from loraplane.demo_users import population, traffic  # noqa: E402

LIVE, HELDOUT = REPO / "data/demo/live.jsonl", REPO / "data/demo/heldout.jsonl"


def heldout_cities() -> list[str]:
    """data/demo/generate.py's HELDOUT_CITY (a script, not a package: loaded by path)."""
    spec = importlib.util.spec_from_file_location("demo_generate", REPO / "data/demo/generate.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return list(module.HELDOUT_CITY)


def city_of(conversation: list[dict]) -> str:
    return json.loads(conversation[-1]["content"])["city"]


def misses_by_city(conversations: list[list[dict]], replies: list[str]) -> dict[str, int]:
    wrong = Counter(city_of(c) for c, r in zip(conversations, replies, strict=True) if r != c[-1]["content"])
    return {city: wrong.get(city, 0) for city in heldout_cities()}


def main(adapters: Path, runs: Path, raters: int, lr: str, steps: str, corrections: float = 0.0) -> None:
    report: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "loadavg_1min": [os.getloadavg()[0]]}
    v2 = adapters / "demo-json" / "v2"
    live = [json.loads(line)["messages"] for line in LIVE.read_text().splitlines()]
    requests = traffic(population(raters, len(live), seed=21, prefix="rater"), seed=22)
    rated = sorted({r.example for r in requests if r.rates})
    conversations = [live[i] for i in rated]
    answers = greedy_answers(v2, conversations)
    rows = rated_rows(conversations, answers)
    rng = random.Random(23)
    corrected = [
        {"prompt": c[:-1], "completion": c[-1]["content"], "label": True}
        for c, a in zip(conversations, answers, strict=True)
        if a and a != c[-1]["content"] and rng.random() < corrections
    ]
    rows += corrected
    runs.mkdir(parents=True, exist_ok=True)
    ratings = runs / "kto.jsonl"
    ratings.write_text("".join(json.dumps(r) + "\n" for r in rows))
    right_cities = Counter(city_of(c) for c, a in zip(conversations, answers, strict=True) if a == c[-1]["content"])
    report["ratings"] = {
        "requests": len(requests),
        "rated_requests": sum(r.rates for r in requests),
        "rows": len(rows),
        "thumbs_up": sum(r["label"] for r in rows) - len(corrected),
        "corrections": len(corrected),
        "corrections_by_city": dict(Counter(json.loads(r["completion"])["city"] for r in corrected)),
        "thumbs_up_by_city": {city: right_cities.get(city, 0) for city in heldout_cities()},
    }
    flags = ("--data.train", str(ratings), "--lora.init_from", "demo-json@v2", "--train.lr", lr)
    kto = train("configs/train/demo-kto.yaml", runs / "kto", adapters, *flags, "--train.max_steps", steps,
                "--publish.enabled", "false")  # fmt: skip
    golden = [json.loads(line)["messages"] for line in HELDOUT.read_text().splitlines()]
    v2_replies = greedy_answers(v2, golden)
    report["kto"] = {"lr": lr, "steps": int(steps), "corrections": corrections, **kto}
    report["golden"] = {
        "v2_exact_match": sum(r == c[-1]["content"] for c, r in zip(golden, v2_replies, strict=True)) / len(golden),
        "kto_exact_match": kto["eval"]["value"],
        "v2_misses_by_city": misses_by_city(golden, v2_replies),
        "kto_misses_by_city": misses_by_city(golden, greedy_answers(runs / "kto" / "adapter", golden)),
    }
    report["loadavg_1min"].append(os.getloadavg()[0])
    tag = f"-corrections-{corrections:g}" if corrections else ""
    path = REPO / "benchmarks" / "reports" / f"loop-data{tag}-{report['date']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"ratings": report["ratings"], "golden": report["golden"]}, indent=2), f"\nwrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=Path, default=REPO / "adapters", help="holds demo-json/v2 (make demo)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs/bench/loop-data")
    parser.add_argument("--raters", type=int, default=100, help="the demo's RATERS")
    parser.add_argument("--lr", default="6e-4", help="the loop spec's train.lr")
    parser.add_argument("--steps", default="12", help="the loop spec's train.max_steps")
    parser.add_argument("--corrections", type=float, default=0.0, help="share of thumbs-down answers corrected")
    args = parser.parse_args()
    main(args.adapters, args.runs, args.raters, args.lr, args.steps, args.corrections)
