"""Training data from a rollout's captured bodies (pure: captures in, files out).

    sft.jsonl          {"messages": [...the request's messages..., {"role": "assistant", "content": answer}]}
                       for every answer scored >= min_score (trainer/data.py's chat format)
    preferences.jsonl  {"prompt": [...messages...], "chosen": [{"role": "assistant", ...}],
                       "rejected": [{"role": "assistant", ...}]} for each prompt answered at least twice
                       with scores at least `margin` apart (TRL's conversational preference format)
    manifest.json      rollout, time window, counts, the sha256 of each file

Only chat requests (`messages`) are exported; a completion request's `prompt` becomes one user message.
Trainer and serving still share only files: nothing here imports trainer/.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]


def prompt_messages(request: Any) -> Messages | None:
    """The conversation a captured request asked about, or None when it has none."""
    if not isinstance(request, dict):
        return None
    messages = request.get("messages")
    if isinstance(messages, list) and messages:
        out = [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in messages if isinstance(m, dict)]
        return out if out and out[-1]["role"] != "assistant" else None
    prompt = request.get("prompt")
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt else None


def build(captures: list[dict], min_score: float, margin: float) -> tuple[list[dict], list[dict]]:
    """(sft rows, preference rows) from {"request", "response", "score", "status"} captures."""
    sft: list[dict] = []
    by_prompt: dict[str, tuple[Messages, list[tuple[float, str]]]] = {}
    for cap in captures:
        messages, answer, score = prompt_messages(cap.get("request")), cap.get("response"), cap.get("score")
        if messages is None or not isinstance(answer, str) or not answer or score is None or cap.get("status") != 200:
            continue
        if score >= min_score:
            sft.append({"messages": [*messages, {"role": "assistant", "content": answer}]})
        key = json.dumps(messages, sort_keys=True)
        by_prompt.setdefault(key, (messages, []))[1].append((float(score), answer))
    preferences = []
    for messages, answers in by_prompt.values():
        best = max(answers, key=lambda a: a[0])
        worst = min(answers, key=lambda a: a[0])
        if best[0] - worst[0] >= margin and best[1] != worst[1]:
            preferences.append(
                {
                    "prompt": messages,
                    "chosen": [{"role": "assistant", "content": best[1]}],
                    "rejected": [{"role": "assistant", "content": worst[1]}],
                }
            )
    return sft, preferences


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write(out: Path, rollout: str, captures: list[dict], min_score: float, margin: float) -> dict:
    """Write the three files into `out` (created); returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    sft, preferences = build(captures, min_score, margin)
    times = [float(c["created_at"]) for c in captures if c.get("created_at") is not None]
    manifest = {
        "rollout": rollout,
        "window": {"from": min(times) if times else None, "to": max(times) if times else None},
        "exported_at": time.time(),
        "captures": len(captures),
        "rated": sum(1 for c in captures if c.get("score") is not None),
        "min_score": min_score,
        "margin": margin,
        "files": {
            "sft.jsonl": {"rows": len(sft), "sha256": _write_jsonl(out / "sft.jsonl", sft)},
            "preferences.jsonl": {
                "rows": len(preferences),
                "sha256": _write_jsonl(out / "preferences.jsonl", preferences),
            },
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
