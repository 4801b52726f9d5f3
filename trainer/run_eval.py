"""The evaluations a training run does: periodic (loss, early stopping), final (exact match), preferences.

Preference metrics on eval pairs (train.method dpo), per pair:
    preference_accuracy: the model scores the chosen answer above the rejected one,
                         log pi(chosen|x) > log pi(rejected|x)
    reward_accuracy / reward_margin: TRL's implicit-reward numbers, beta * (log pi - log pi_ref)
                         of chosen minus that of rejected (> 0, and its mean)
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from trainer import checkpoint
from trainer.evaluate import eval_loss, exact_match, perplexity, write_replies
from trainer.objectives import DPO, Pair, answer_logits, sequence_logps
from trainer.tokens import collate

if TYPE_CHECKING:
    from trainer.train import Run


@torch.no_grad()
def score_pairs(causal_lm, pairs: list[Pair], pad_id: int, batch_size: int, device, adapter_off: bool = False):
    """(log pi(chosen), log pi(rejected)) per pair, [n] each, in eval mode (no dropout)."""
    was_training = causal_lm.training
    causal_lm.eval()
    chosen, rejected = [], []
    context = causal_lm.disable_adapter() if adapter_off else nullcontext()
    with context:
        for start in range(0, len(pairs), batch_size):
            part = pairs[start : start + batch_size]
            batch = collate([p.chosen for p in part] + [p.rejected for p in part], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logps = sequence_logps(*answer_logits(causal_lm, batch), 2 * len(part))
            chosen.append(logps[: len(part)].cpu())
            rejected.append(logps[len(part) :].cpu())
    causal_lm.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def set_reference(pairs: list[Pair], causal_lm, pad_id: int, batch_size: int, device, adapter_off: bool) -> None:
    """The DPO reference: the starting point's log-probs, computed once before training."""
    if not pairs:
        return
    chosen, rejected = score_pairs(causal_lm, pairs, pad_id, batch_size, device, adapter_off)
    for pair, c, r in zip(pairs, chosen.tolist(), rejected.tolist(), strict=True):
        pair.ref_chosen, pair.ref_rejected = c, r


def preference_metrics(run: Run) -> dict[str, float]:
    pairs = run.eval_pairs
    chosen, rejected = score_pairs(
        run.peft_model, pairs, run.tokenizer.pad_token_id, run.cfg.eval.batch_size, run.accelerator.device
    )
    ref_c = torch.tensor([p.ref_chosen for p in pairs])
    ref_r = torch.tensor([p.ref_rejected for p in pairs])
    margins = run.cfg.dpo.beta * ((chosen - ref_c) - (rejected - ref_r))
    return {
        "preference_accuracy": float((chosen > rejected).float().mean()),
        "reward_accuracy": float((margins > 0).float().mean()),
        "reward_margin": float(margins.mean()),
        "pairs": len(pairs),
    }


def current_eval_loss(run: Run) -> float:
    with run.accelerator.autocast():
        return eval_loss(
            run.peft_model,
            run.eval_examples,
            run.tokenizer.pad_token_id,
            run.cfg.eval.batch_size,
            run.accelerator.device,
        )


def periodic_eval(run: Run, step: int) -> bool:
    """Eval loss/perplexity (every process computes the same number); True = stop early."""
    loss = current_eval_loss(run)
    state = run.state
    state.eval_losses.append([step, loss])
    values = {"eval/loss": loss, "eval/perplexity": perplexity(loss)}
    if isinstance(run.objective, DPO) and run.eval_pairs:
        prefs = preference_metrics(run)
        values |= {f"eval/{k}": v for k, v in prefs.items() if k != "pairs"}
    run.reporter.scalars(step, values)
    run.log(f"step {step}: " + ", ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in values.items()))
    if state.best_eval is None or loss < state.best_eval - 1e-4:
        state.best_eval, state.best_step, state.bad_evals = loss, step, 0
        if run.cfg.train.restore_best and run.accelerator.is_main_process:
            checkpoint.save_best(run.out_dir / "checkpoints", step, run.peft_model)
    else:
        state.bad_evals += 1
    patience = run.cfg.train.early_stopping_patience
    if patience and state.bad_evals >= patience:
        run.log(f"early stopping at step {step}: no eval-loss improvement in {patience} evals")
        return True
    return False


def restore_best(run: Run) -> None:
    """Before the final eval and publish: go back to the best periodic eval's weights."""
    state = run.state
    if not (run.cfg.train.restore_best and run.eval_examples and run.cfg.train.eval_every):
        return
    if state.best_step is None or state.best_step == state.step:
        return
    last_evaluated = bool(state.eval_losses) and state.eval_losses[-1][0] == state.step
    if not last_evaluated and current_eval_loss(run) < state.best_eval - 1e-4:
        return  # the last step's weights are the best (final_eval logs their loss)
    run.accelerator.wait_for_everyone()
    checkpoint.load_lora(run.peft_model, checkpoint.best_file(run.out_dir / "checkpoints", state.best_step))
    run.log(f"restored the best eval checkpoint (step {state.best_step}, eval loss {state.best_eval:.4f})")


def final_eval(run: Run) -> dict[str, Any]:
    """Eval loss on every process; exact match by greedy generation on the main process."""
    result: dict[str, Any] = {"metric": "exact_match", "value": None, "n": 0, "eval_loss": None, "metrics": {}}
    if run.eval_data is None:
        return result
    if run.eval_examples:
        result["eval_loss"] = current_eval_loss(run)
    if isinstance(run.objective, DPO) and run.eval_pairs:
        result |= preference_metrics(run)
        run.log(", ".join(f"{k} {v:.3f}" for k, v in result.items() if k in ("preference_accuracy", "reward_margin")))
    if run.cfg.eval.exact_match and run.accelerator.is_main_process:
        conversations = run.eval_data.conversations[: run.cfg.eval.max_examples]
        with run.accelerator.autocast():
            em = exact_match(
                run.peft_model,
                run.tokenizer,
                conversations,
                run.cfg.eval.batch_size,
                run.cfg.eval.max_new_tokens,
                run.accelerator.device,
                run.cfg.eval.metrics,
            )
        result.update(value=em.value, n=em.n, metrics=em.metrics)
        write_replies(run.out_dir / "eval_replies.jsonl", em.rows)
        hits = f"{em.value:.3f} ({round(em.value * em.n)}/{em.n})"
        others = "".join(f", {k} {v:.3f}" for k, v in em.metrics.items() if k != "exact_match")
        run.log(f"exact match {hits}{others}; " + ("misses:" if em.value < 1 else "e.g.:"))
        for sample in em.samples:
            run.log(f"  reference {sample['reference']!r}\n  reply     {sample['reply']!r}")
    return result
