"""The evaluations a training run does: periodic (loss, early stopping), final (exact match, the
objective's own metrics: DPO's preference accuracy, KTO's reward accuracy), best-weights restore."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer import checkpoint
from trainer.evaluation.scoring import eval_loss, exact_match, perplexity, write_replies

if TYPE_CHECKING:
    from trainer.run import Run

COUNTS = ("pairs", "rows")  # keys of objective eval metrics that count items rather than measure


def objective_metrics(run: Run) -> dict[str, float]:
    """The objective's eval metrics on its eval items (empty without items)."""
    return run.objective.eval_metrics(run.eval_items, run.setting) if run.eval_items else {}


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
    values |= {f"eval/{k}": v for k, v in objective_metrics(run).items() if k not in COUNTS}
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
    measured = objective_metrics(run)
    if measured:
        result |= measured
        run.log(", ".join(f"{k} {v:.3f}" for k, v in measured.items() if k not in COUNTS))
    if run.cfg.eval.exact_match and run.accelerator.is_main_process:
        conversations = run.eval_conversations[: run.cfg.eval.max_examples]
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
