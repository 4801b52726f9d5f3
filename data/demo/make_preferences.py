"""Preference pairs for the demo task (DPO): chosen = the reference answer, rejected = one field wrong.

    python data/demo/make_preferences.py    # writes preferences-train.jsonl, preferences-heldout.jsonl

Built from train.jsonl and heldout.jsonl here, deterministically (fixed seed); a test checks the
committed files match. Rows use TRL's conversational field names:
    {"prompt": [user message], "chosen": [assistant message], "rejected": [assistant message]}
The wrong field is picked at random: another age (off by 1-9), or another name, city or job
taken from the same file, so a rejected answer is a plausible, well-formed miss.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLITS = {"train.jsonl": "preferences-train.jsonl", "heldout.jsonl": "preferences-heldout.jsonl"}
SEED = 14


def wrong_answer(answer: dict, pools: dict[str, list], rng: random.Random) -> dict:
    field = rng.choice(["name", "age", "city", "job"])
    wrong = dict(answer)
    if field == "age":
        wrong["age"] = answer["age"] + rng.choice([-1, 1]) * rng.randint(1, 9)
    else:
        wrong[field] = rng.choice([v for v in pools[field] if v != answer[field]])
    return wrong


def pairs_for(rows: list[dict], rng: random.Random) -> list[dict]:
    answers = [json.loads(r["messages"][-1]["content"]) for r in rows]
    pools = {key: sorted({a[key] for a in answers}) for key in ("name", "city", "job")}
    out = []
    for row, answer in zip(rows, answers, strict=True):
        rejected = json.dumps(wrong_answer(answer, pools, rng))
        out.append(
            {
                "prompt": row["messages"][:-1],
                "chosen": [{"role": "assistant", "content": row["messages"][-1]["content"]}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return out


def build() -> dict[str, str]:
    """{output file name: its text}."""
    rng = random.Random(SEED)
    files = {}
    for source, target in SPLITS.items():
        rows = [json.loads(line) for line in (HERE / source).read_text().splitlines() if line.strip()]
        files[target] = "".join(json.dumps(p) + "\n" for p in pairs_for(rows, rng))
    return files


if __name__ == "__main__":
    for name, text in build().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name} ({text.count(chr(10))} pairs)")
