"""Training data from captured bodies and their ratings (pure: captures in, files out).

    sft.jsonl          {"messages": [...the request's messages..., {"role": "assistant", "content": answer}]}
                       for every answer scored >= min_score (trainer/data.py's chat format)
    preferences.jsonl  {"prompt": [...messages...], "chosen": [{"role": "assistant", ...}],
                       "rejected": [{"role": "assistant", ...}]} for each prompt answered at least twice
                       with scores at least `margin` apart (TRL's conversational preference format)
    kto.jsonl          {"prompt": [...messages...], "completion": [{"role": "assistant", "content": answer}],
                       "label": mean score >= kto_threshold} for every rated answer (TRL's unpaired
                       format, what trainer/preferences.py's rated reader takes for train.method kto)
    manifest.json      where the data came from (rollout or adapter), time window, counts, label
                       source, the sha256 of each file

A user's correction (POST /v1/feedback `correction`: what the answer should have been) says what is
right where a thumbs-down only says what is wrong. It adds, whatever the label source: an sft row
(the request's messages + the correction), a preference pair (the correction chosen over the answer)
and a desirable kto row (the correction, counted as a score of 1; `duplicates_merged` counts it when
the same text was also rated). A "correction" equal to the answer corrects nothing and is left out.

Deduplication (kto.jsonl): the same prompt answered with the same text is one row; its ratings
are combined as their mean score (two thumbs-up and one thumbs-down: 0.67, desirable at the
default threshold 0.5). `duplicates_merged` in the manifest counts the rows folded in.

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
CHAT_ROLES = ("system", "user", "assistant")  # what the trainer's readers accept


def prompt_messages(request: Any) -> Messages | None:
    """The conversation a captured request asked about, or None when it has none."""
    if not isinstance(request, dict):
        return None
    messages = request.get("messages")
    if isinstance(messages, list) and messages:
        out = [
            {"role": str(m.get("role")), "content": m.get("content")}
            for m in messages
            if isinstance(m, dict) and m.get("role") in CHAT_ROLES and isinstance(m.get("content"), str)
        ]
        usable = out and len(out) == len(messages) and out[-1]["role"] != "assistant"
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in out] if usable else None
    prompt = request.get("prompt")
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt else None


def rated(captures: list[dict]) -> list[tuple[Messages, str, float]]:
    """(prompt, answer, score) of every usable rated capture: a chat prompt, a 200 with a non-empty answer."""
    out = []
    for cap in captures:
        messages, answer, score = prompt_messages(cap.get("request")), cap.get("response"), cap.get("score")
        if messages is None or not isinstance(answer, str) or not answer.strip() or score is None:
            continue
        if cap.get("status") == 200:
            out.append((messages, answer, float(score)))
    return out


def corrected(captures: list[dict]) -> list[tuple[Messages, str, str]]:
    """(prompt, answer, correction) of every usable capture a user corrected, rated or not. A
    "correction" that is the answer itself (blanks aside) corrects nothing and is left out."""
    out = []
    for cap in captures:
        messages, answer, correction = prompt_messages(cap.get("request")), cap.get("response"), cap.get("correction")
        if messages is None or not isinstance(correction, str) or not correction.strip():
            continue
        if cap.get("status") == 200 and isinstance(answer, str) and answer.strip() != correction.strip():
            out.append((messages, answer, correction))
    return out


def _pair(messages: Messages, chosen: str, rejected: str) -> dict:
    return {
        "prompt": messages,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def build(captures: list[dict], min_score: float, margin: float) -> tuple[list[dict], list[dict]]:
    """(sft rows, preference rows) from {"request", "response", "score", "status", "correction"} captures."""
    sft: list[dict] = []
    by_prompt: dict[str, tuple[Messages, list[tuple[float, str]]]] = {}
    for messages, answer, score in rated(captures):
        if score >= min_score:
            sft.append({"messages": [*messages, {"role": "assistant", "content": answer}]})
        key = json.dumps(messages, sort_keys=True)
        by_prompt.setdefault(key, (messages, []))[1].append((score, answer))
    preferences = []
    for messages, answers in by_prompt.values():
        best = max(answers, key=lambda a: a[0])
        worst = min(answers, key=lambda a: a[0])
        if best[0] - worst[0] >= margin and best[1] != worst[1]:
            preferences.append(_pair(messages, best[1], worst[1]))
    seen = {json.dumps([p["prompt"], p["chosen"], p["rejected"]], sort_keys=True) for p in preferences}
    corrections: set[str] = set()
    for messages, answer, correction in corrected(captures):
        key = json.dumps([messages, correction, answer], sort_keys=True)
        if key in corrections:
            continue
        corrections.add(key)
        sft.append({"messages": [*messages, {"role": "assistant", "content": correction}]})
        pair = _pair(messages, correction, answer)
        key = json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], sort_keys=True)
        if answer.strip() and key not in seen:
            seen.add(key)
            preferences.append(pair)
    return sft, preferences


def build_kto(captures: list[dict], threshold: float) -> tuple[list[dict], int]:
    """(kto rows, duplicates merged): one row per distinct (prompt, answer), labelled by its mean score."""
    groups: dict[str, tuple[Messages, str, list[float]]] = {}
    for messages, answer, score in rated(captures) + [(m, c, 1.0) for m, _, c in corrected(captures)]:
        key = json.dumps([messages, answer], sort_keys=True)
        groups.setdefault(key, (messages, answer, []))[2].append(score)
    rows = [
        {
            "prompt": messages,
            "completion": [{"role": "assistant", "content": answer}],
            "label": sum(scores) / len(scores) >= threshold,
        }
        for messages, answer, scores in groups.values()
    ]
    merged = sum(len(scores) - 1 for _, _, scores in groups.values())
    return rows, merged


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write(
    out: Path,
    source: dict[str, Any],
    captures: list[dict],
    min_score: float,
    margin: float,
    *,
    kto_threshold: float = 0.5,
    label_source: str = "user",
    opted_out: int = 0,
) -> dict:
    """Write the four files into `out` (created); returns the manifest. `source` says where the
    captures came from ({"rollout": NAME} or {"adapter": NAME, "version": ...}); `opted_out` counts
    the rows the gateway left out for keys with train_opt_out."""
    out.mkdir(parents=True, exist_ok=True)
    sft, preferences = build(captures, min_score, margin)
    kto, merged = build_kto(captures, kto_threshold)
    times = [float(c["created_at"]) for c in captures if c.get("created_at") is not None]
    files: dict[str, dict[str, Any]] = {}
    for name, rows in (("sft.jsonl", sft), ("preferences.jsonl", preferences), ("kto.jsonl", kto)):
        files[name] = {"rows": len(rows), "sha256": _write_jsonl(out / name, rows)}
    files["kto.jsonl"]["desirable"] = sum(1 for row in kto if row["label"])
    files["kto.jsonl"]["undesirable"] = len(kto) - files["kto.jsonl"]["desirable"]
    manifest = {
        **source,
        "window": {"from": min(times) if times else None, "to": max(times) if times else None},
        "exported_at": time.time(),
        "captures": len(captures),
        "rated": sum(1 for c in captures if c.get("score") is not None),
        "corrections": len(corrected(captures)),
        "opted_out": opted_out,
        "duplicates_merged": merged,
        "label_source": label_source,
        "min_score": min_score,
        "margin": margin,
        "kto_threshold": kto_threshold,
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
