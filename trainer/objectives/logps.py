"""Log-probabilities of answers: the LM head only where a token is trained, summed per row."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from trainer.tokens import IGNORE, Encoded, collate


def answer_logits(causal_lm, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [K, vocab], targets [K], row of each [K]) at the K positions that have a target.

    The LM head runs only there: answers are ~1/4 of a chat sample, and a 49k-vocab head over
    every position is a fifth of the model's FLOPs.
    """
    lm = causal_lm.get_base_model() if hasattr(causal_lm, "get_base_model") else causal_lm
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    hidden = lm.get_decoder()(**inputs, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    rows = torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)[keep]
    return lm.get_output_embeddings()(hidden[:, :-1][keep]).float(), targets[keep], rows


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each of the K answer positions, [K]."""
    return torch.gather(logits.log_softmax(-1), 1, targets[:, None]).squeeze(1)


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum of log p(target) per row: the log-probability of each row's whole answer, [n_rows]."""
    per_token = token_logps(logits, targets)
    return torch.zeros(n_rows, device=logits.device, dtype=per_token.dtype).index_add(0, rows, per_token)


@torch.no_grad()
def score_sequences(
    causal_lm, sequences: list[Encoded], pad_id: int, batch_size: int, device, adapter_off: bool = False
) -> torch.Tensor:
    """log pi(answer | prompt) of each sequence, [n], in eval mode (no dropout); on CPU.

    adapter_off: score with the LoRA adapter switched off (a fresh adapter's reference is the base).
    """
    was_training = causal_lm.training
    causal_lm.eval()
    scores = []
    with causal_lm.disable_adapter() if adapter_off else nullcontext():
        for start in range(0, len(sequences), batch_size):
            part = sequences[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(part, pad_id).items()}
            scores.append(sequence_logps(*answer_logits(causal_lm, batch), len(part)).cpu())
    causal_lm.train(was_training)
    return torch.cat(scores) if scores else torch.zeros(0)
