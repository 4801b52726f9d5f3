"""Evaluation: token-level loss/perplexity, and exact match of greedy replies.

Exact match = the whole greedy reply, stripped, equals the reference answer, stripped — the
same generation the serving engine does for a chat request with temperature 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from trainer.data import Messages
from trainer.evaluation.metrics import score
from trainer.tokens import IGNORE, Encoded, collate, render


class CausalLMLoss(torch.nn.Module):
    """forward(batch) -> (sum of next-token losses over trained tokens, their count).

    The LM head runs only at positions that have a target: answers are ~1/4 of a chat sample,
    and a 49k-vocab head over every position is a fifth of the model's FLOPs plus a
    [tokens x vocab] logits tensor. A module (not a function) so DDP can wrap it.
    """

    def __init__(self, causal_lm):
        super().__init__()
        self.causal_lm = causal_lm  # a PEFT model or a plain *ForCausalLM

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        lm = self.causal_lm.get_base_model() if hasattr(self.causal_lm, "get_base_model") else self.causal_lm
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        hidden = lm.get_decoder()(**inputs, use_cache=False).last_hidden_state
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep])
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        return loss, keep.sum()


@torch.no_grad()
def eval_loss(model, examples: list[Encoded], pad_id: int, batch_size: int, device) -> float:
    """Mean loss per trained token over all examples (not a mean of batch means)."""
    was_training = model.training
    model.eval()
    loss_fn = CausalLMLoss(model)
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        loss, n = loss_fn({k: v.to(device) for k, v in batch.items()})
        total, count = total + float(loss), count + int(n)
    model.train(was_training)
    return total / max(count, 1)


@dataclass
class ExactMatch:
    value: float  # exact match, always computed
    n: int
    samples: list[dict[str, str]]  # up to 3 misses (or hits if none missed): reference, reply
    metrics: dict[str, float] = field(default_factory=dict)  # eval.metrics (evaluation/metrics.py) of the replies
    rows: list[dict[str, str]] = field(default_factory=list)  # every reference and greedy reply


@torch.no_grad()
def greedy_replies(
    model, tokenizer, prompts: list[Messages], batch_size: int, max_new_tokens: int, device
) -> list[str]:
    """Batched greedy generation with left padding (so every prompt ends where generation starts)."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    replies: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [render(tokenizer, p, add_generation_prompt=True) for p in prompts[start : start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
            )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            replies += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return replies


def exact_match(
    model,
    tokenizer,
    conversations: list[Messages],
    batch_size: int,
    max_new_tokens: int,
    device,
    metrics: list[str] = ("exact_match",),
) -> ExactMatch:
    prompts = [c[:-1] for c in conversations]
    references = [c[-1]["content"].strip() for c in conversations]
    replies = greedy_replies(model, tokenizer, prompts, batch_size, max_new_tokens, device)
    hits = [r.strip() == ref for r, ref in zip(replies, references, strict=True)]
    rows = list(zip(prompts, references, replies, hits, strict=True))
    misses = [r for r in rows if not r[3]]
    samples = [{"reference": ref, "reply": reply.strip()} for _, ref, reply, _ in (misses or rows)[:3]]
    scores = score(replies, references, list(metrics))
    every = [{"reference": ref, "reply": reply} for ref, reply in zip(references, replies, strict=True)]
    return ExactMatch(sum(hits) / max(len(hits), 1), len(hits), samples, scores, every)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def write_replies(path, rows: list[dict[str, str]]) -> None:  # noqa: ANN001
    """One JSON line per eval example: reference and greedy reply (compare with `loraplane eval`'s)."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
