"""Generation metrics over (reply, reference) pairs; no torch, so `loraplane eval` uses it too.

    exact_match  fraction of replies that equal the reference (both stripped)
    json_valid   fraction of replies that parse as JSON (json.loads of the stripped reply)
    rouge_l      mean ROUGE-L F1 (rouge-score, its default tokenizer: lowercased alphanumeric words)
    bleu         corpus BLEU of sacrebleu (0-100, its default 13a tokenizer, one reference each)

The trainer scores its own greedy replies at the end of training and `loraplane eval` scores a
served model's greedy replies with this same function: the same numbers in training and production.
"""

from __future__ import annotations

import json

from trainer.config import GENERATION_METRICS


def _json_valid(reply: str) -> bool:
    try:
        json.loads(reply)
    except ValueError:
        return False
    return True


def _rouge_l(replies: list[str], references: list[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return sum(
        scorer.score(ref, reply)["rougeL"].fmeasure for reply, ref in zip(replies, references, strict=True)
    ) / len(replies)


def _bleu(replies: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(replies, [references]).score


def score(replies: list[str], references: list[str], metrics: list[str]) -> dict[str, float]:
    """{metric: value} for each requested metric, in the order asked."""
    if len(replies) != len(references):
        raise ValueError(f"{len(replies)} replies for {len(references)} references")
    unknown = [m for m in metrics if m not in GENERATION_METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; choose from {', '.join(GENERATION_METRICS)}")
    if not replies:
        return {m: 0.0 for m in metrics}
    replies = [r.strip() for r in replies]
    references = [r.strip() for r in references]
    values = {
        "exact_match": lambda: sum(a == b for a, b in zip(replies, references, strict=True)) / len(replies),
        "json_valid": lambda: sum(map(_json_valid, replies)) / len(replies),
        "rouge_l": lambda: _rouge_l(replies, references),
        "bleu": lambda: _bleu(replies, references),
    }
    return {m: float(values[m]()) for m in metrics}


def markdown_table(rows: dict[str, dict[str, float]], metrics: list[str]) -> str:
    """| model | n | metric ... | with one row per model; rows: {model: {"n": .., metric: ..}}."""
    lines = ["| model | n | " + " | ".join(metrics) + " |", "|---|---:|" + "---:|" * len(metrics)]
    for model, values in rows.items():
        cells = [f"{values[m]:.2f}" if m == "bleu" else f"{values[m]:.3f}" for m in metrics]
        lines.append(f"| {model} | {int(values['n'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
