"""The training recipe: setup -> train loop -> evaluate -> save -> publish.

One optimizer step on P processes with A accumulation micro-batches of B sequences consumes
P * A * B sequences. The loss of a step is (sum of token losses) / (trained tokens of the whole
step, all micro-batches, all processes), so gradient accumulation and multi-process runs give
the same gradient as one big batch (no mean-of-means).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer import adalora, checkpoint
from trainer.base_models import read_manifest, resolve_base
from trainer.config import Config
from trainer.data import Dataset, load_dataset_file, split_validation
from trainer.errors import ConfigError, DataError, PublishError
from trainer.evaluate import CausalLMLoss, eval_loss, exact_match, perplexity, write_replies
from trainer.model import add_lora, choose_precision, load_base_model, load_tokenizer, trainable_parameters
from trainer.publish import check_servable
from trainer.report import Reporter
from trainer.tokens import Batches, Encoded, apply_template_override, collate, encode_all, pack


def lr_lambda(step: int, max_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier on the peak lr: linear warmup over warmup_steps, then cosine/linear decay."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


@dataclass
class Run:
    cfg: Config
    accelerator: Any
    tokenizer: Any
    model: Any  # CausalLMLoss around the PEFT model, accelerate-prepared (DDP-wrapped if multi-process)
    optimizer: Any
    scheduler: Any
    batches: Batches
    train_data: Dataset
    eval_data: Dataset | None
    eval_examples: list[Encoded]
    base_dir: Path
    base_manifest: dict
    reporter: Reporter
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def peft_model(self):
        return self.accelerator.unwrap_model(self.model).causal_lm

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out_dir)


def precheck(cfg: Config) -> None:
    """Fail before any work on what would only fail at the end."""
    cfg.publish.require_target()
    if cfg.publish.enabled:
        adalora.check_rank_budget(cfg.lora, cfg.publish.max_lora_rank)  # AdaLoRA: its own message first
        check_servable(
            {
                "r": adalora.planned_rank(cfg.lora),
                "use_dora": cfg.lora.use_dora,
                "modules_to_save": cfg.lora.modules_to_save,
            },
            cfg.publish.max_lora_rank,
        )
        target = Path(cfg.publish.adapters_dir) / cfg.publish.name / cfg.publish.version
        if target.exists():
            raise PublishError(
                f"{target} already exists; published versions are immutable, choose a new --publish.version"
            )


def load_data(cfg: Config) -> tuple[Dataset, Dataset | None]:
    train = load_dataset_file(cfg.data.train, cfg.data.format, cfg.data.skip_bad_lines)
    if cfg.data.eval is not None:
        return train, load_dataset_file(cfg.data.eval, cfg.data.format, cfg.data.skip_bad_lines)
    if cfg.data.val_ratio > 0:
        return split_validation(train, cfg.data.val_ratio, cfg.data.seed)
    return train, None


def setup(cfg: Config) -> Run:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    precheck(cfg)
    precision = choose_precision(cfg.model.precision)
    accelerator = Accelerator(mixed_precision=precision.mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(cfg.train.seed)
    base_dir = resolve_base(cfg.base, Path(cfg.models_dir))
    manifest = read_manifest(base_dir)
    tokenizer = load_tokenizer(base_dir)
    apply_template_override(tokenizer, cfg.data.chat_template)
    train_data, eval_data = load_data(cfg)
    examples, dropped = encode_all(tokenizer, train_data.conversations, cfg.data.max_seq_len)
    if not examples:
        raise DataError(
            f"{cfg.data.train}: all {dropped} examples lost their answers to truncation at "
            f"data.max_seq_len={cfg.data.max_seq_len}; raise data.max_seq_len"
        )
    if cfg.data.packing:
        examples = pack(examples, cfg.data.max_seq_len, cfg.data.seed)
    eval_examples = encode_all(tokenizer, eval_data.conversations, cfg.data.max_seq_len)[0] if eval_data else []
    model = load_base_model(base_dir, cfg.model, precision, accelerator.device)
    model = add_lora(model, cfg.lora, str(manifest.get("name") or base_dir.name), cfg.train.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warmup = math.ceil(cfg.train.warmup_ratio * cfg.train.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_lambda(s, cfg.train.max_steps, warmup, cfg.train.scheduler, cfg.train.min_lr_ratio),
    )
    model, optimizer = accelerator.prepare(CausalLMLoss(model), optimizer)
    batches = Batches(
        examples,
        cfg.train.batch_size,
        cfg.train.grad_accum,
        cfg.train.seed,
        cfg.train.length_grouping,
        accelerator.num_processes,
        accelerator.process_index,
    )
    run = Run(
        cfg,
        accelerator,
        tokenizer,
        model,
        optimizer,
        scheduler,
        batches,
        train_data,
        eval_data,
        eval_examples,
        base_dir,
        manifest,
        Reporter(Path(cfg.out_dir), accelerator.is_main_process),
    )
    run.state = {"step": 0, "train_losses": [], "eval_losses": [], "best_eval": None, "bad_evals": 0}
    trainable, total = trainable_parameters(model)
    log(
        run,
        f"base {base_dir.name}: precision {precision.name}, quantization {cfg.model.quantization}, "
        f"trainable {trainable / 1e6:.2f}M of {total / 1e6:.1f}M params, {len(examples)} train rows "
        f"({dropped} dropped after truncation, {train_data.skipped} bad lines skipped)",
    )
    return run


def log(run: Run, message: str) -> None:
    if run.accelerator.is_main_process:
        from tqdm.auto import tqdm

        tqdm.write(message)


def accumulate_gradients(run: Run, step: int) -> tuple[torch.Tensor, int, int]:
    """Backward over this process's micro-batches of `step`; grads end up = d(step loss)/dθ.

    Returns (this process's summed token loss, trained tokens in the whole step, all tokens).
    """
    micro_batches, trained, tokens = run.batches.for_step(step)
    scale = run.accelerator.num_processes / max(trained, 1)  # DDP averages grads over processes
    loss_sum = torch.zeros((), device=run.accelerator.device)
    for i, micro in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = nullcontext() if last else run.accelerator.no_sync(run.model)
        batch = {k: v.to(run.accelerator.device) for k, v in collate(micro, run.tokenizer.pad_token_id).items()}
        with sync, run.accelerator.autocast():
            loss, _ = run.model(batch)
            run.accelerator.backward(loss * scale)
        loss_sum += loss.detach()
    return loss_sum, trained, tokens


def train_step(run: Run, step: int) -> tuple[float, int]:
    """One optimizer step; returns (loss per trained token of the step, tokens in the step)."""
    loss_sum, trained, tokens = accumulate_gradients(run, step)
    if run.cfg.train.max_grad_norm is not None:
        run.accelerator.clip_grad_norm_(run.model.parameters(), run.cfg.train.max_grad_norm)
    run.optimizer.step()
    adalora.after_optimizer_step(run.peft_model, step)  # AdaLoRA's rank budget; needs this step's grads
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    total = run.accelerator.reduce(loss_sum, reduction="sum")
    return float(total) / max(trained, 1), tokens


def resume_fingerprint(cfg: Config) -> dict[str, Any]:
    """Config keys that must match for a checkpoint to be resumed (max_steps may grow)."""
    values = cfg.to_dict()
    return {k: values[k] for k in ("base", "model", "lora", "data")} | {
        "train": {k: v for k, v in values["train"].items() if k not in ("max_steps", "log_every", "eval_every")}
    }


def maybe_resume(run: Run) -> None:
    root = run.out_dir / "checkpoints"
    if run.accelerator.is_main_process and root.is_dir():
        for stale in root.glob(".tmp-step-*"):  # a save that a killed run never finished
            shutil.rmtree(stale, ignore_errors=True)
    run.accelerator.wait_for_everyone()
    path = checkpoint.latest(root) if run.cfg.resume else None
    if path is None:
        if run.accelerator.is_main_process:
            (run.out_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log
        return
    state = checkpoint.restore(path, run.peft_model, run.optimizer, run.scheduler, run.accelerator.process_index)
    if state.get("fingerprint") != resume_fingerprint(run.cfg):
        raise ConfigError(f"{path} was written with a different config; use a fresh out_dir or pass --resume false")
    run.state = state
    log(run, f"resumed from {path} at step {state['step']}")


def save_checkpoint(run: Run, step: int) -> None:
    root = run.out_dir / "checkpoints"
    checkpoint.write_process_rng(root, step, run.accelerator.process_index)
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        state = {**run.state, "fingerprint": resume_fingerprint(run.cfg)}
        checkpoint.commit(root, step, run.peft_model, run.optimizer, run.scheduler, state)
    run.accelerator.wait_for_everyone()


def periodic_eval(run: Run, step: int) -> bool:
    """Eval loss/perplexity (every process computes the same number); True = stop early."""
    with run.accelerator.autocast():
        loss = eval_loss(
            run.peft_model,
            run.eval_examples,
            run.tokenizer.pad_token_id,
            run.cfg.eval.batch_size,
            run.accelerator.device,
        )
    run.state["eval_losses"].append([step, loss])
    run.reporter.scalars(step, {"eval/loss": loss, "eval/perplexity": perplexity(loss)})
    log(run, f"step {step}: eval loss {loss:.4f}, perplexity {perplexity(loss):.3f}")
    best = run.state["best_eval"]
    if best is None or loss < best - 1e-4:
        run.state["best_eval"], run.state["bad_evals"] = loss, 0
    else:
        run.state["bad_evals"] += 1
    patience = run.cfg.train.early_stopping_patience
    if patience and run.state["bad_evals"] >= patience:
        log(run, f"early stopping at step {step}: no eval-loss improvement in {patience} evals")
        return True
    return False


def train_loop(run: Run) -> None:
    from tqdm.auto import tqdm

    cfg = run.cfg.train
    bar = tqdm(
        total=cfg.max_steps,
        initial=run.state["step"],
        unit="step",
        dynamic_ncols=True,
        disable=not run.accelerator.is_main_process,
    )
    seen_tokens, started = 0, time.perf_counter()
    run.model.train()
    for step in range(run.state["step"], cfg.max_steps):
        loss, tokens = train_step(run, step)
        done = step + 1
        seen_tokens += tokens
        tok_s = seen_tokens / (time.perf_counter() - started)  # all processes' tokens, incl. padding-free
        run.state["step"] = done
        run.state["train_losses"].append([done, loss])
        lr = run.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:.0f}")
        bar.update(1)
        if done % max(cfg.log_every, 1) == 0:
            run.reporter.scalars(done, {"train/loss": loss, "train/lr": lr, "train/tokens_per_s": tok_s})
        periodic = bool(run.eval_examples and cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.max_steps)
        stop = periodic and periodic_eval(run, done)  # the last step's eval is the final eval
        if cfg.save_every and done % cfg.save_every == 0:
            save_checkpoint(run, done)
        if stop:
            break
    bar.close()
    run.state["train_seconds"] = run.state.get("train_seconds", 0.0) + time.perf_counter() - started
    run.state["tokens_per_s"] = seen_tokens / max(time.perf_counter() - started, 1e-9)


def final_eval(run: Run) -> dict[str, Any]:
    """Eval loss on every process; exact match by greedy generation on the main process."""
    result: dict[str, Any] = {"metric": "exact_match", "value": None, "n": 0, "eval_loss": None, "metrics": {}}
    if run.eval_data is None:
        return result
    if run.eval_examples:
        with run.accelerator.autocast():
            result["eval_loss"] = eval_loss(
                run.peft_model,
                run.eval_examples,
                run.tokenizer.pad_token_id,
                run.cfg.eval.batch_size,
                run.accelerator.device,
            )
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
        log(
            run,
            f"exact match {em.value:.3f} ({round(em.value * em.n)}/{em.n}); "
            + ", ".join(f"{k} {v:.3f}" for k, v in em.metrics.items())
            + ("; misses:" if em.value < 1 else "; e.g.:"),
        )
        for sample in em.samples:
            log(run, f"  reference {sample['reference']!r}\n  reply     {sample['reply']!r}")
    return result


def manifest_parts(run: Run) -> dict[str, Any]:
    peft_cfg = adalora.published_lora_config(run.peft_model)  # AdaLoRA: the plain LoRA it is published as
    targets = peft_cfg.target_modules
    return {
        "base": {"name": peft_cfg.base_model_name_or_path, "weights_sha256": run.base_manifest["weights_sha256"]},
        "lora": {
            "r": peft_cfg.r,
            "alpha": peft_cfg.lora_alpha,
            "target_modules": sorted(targets) if not isinstance(targets, str) else targets,
            "rslora": bool(peft_cfg.use_rslora),
        },
        "dataset": {"train": run.cfg.data.train, "sha256": run.train_data.sha256},
        "config": run.cfg.to_dict(),
    }


def publish(run: Run, adapter_dir: Path, eval_result: dict[str, Any]) -> Path:
    from trainer.publish import build_manifest, publish_adapter

    pub = run.cfg.publish
    manifest = build_manifest(name=pub.name, version=pub.version, eval_result=eval_result, **manifest_parts(run))
    return publish_adapter(adapter_dir, Path(pub.adapters_dir), pub.name, pub.version, manifest, pub.max_lora_rank)


def finish(run: Run) -> dict[str, Any]:
    """Final eval, save the adapter and loss plot, publish; returns the run summary (summary.json)."""
    eval_result = final_eval(run)
    summary: dict[str, Any] = {
        "steps": run.state["step"],
        "eval": eval_result,
        "published": None,
        "train_seconds": run.state.get("train_seconds"),
        "tokens_per_s": run.state.get("tokens_per_s"),
        "train_losses": run.state["train_losses"],  # [step, loss], continued across resumes
    }
    if run.accelerator.is_main_process:
        adapter_dir = run.out_dir / "adapter"
        adalora.save_adapter(run.peft_model, adapter_dir)  # AdaLoRA is saved as the equivalent plain LoRA
        summary["adapter"] = str(adapter_dir)
        final = {"eval/loss": eval_result["eval_loss"], "eval/exact_match": eval_result["value"]}
        run.reporter.scalars(run.state["step"], {k: v for k, v in final.items() if v is not None})
        evals = run.state["eval_losses"] + (
            [[run.state["step"], eval_result["eval_loss"]]] if final["eval/loss"] else []
        )
        run.reporter.plot_losses([tuple(x) for x in run.state["train_losses"]], [tuple(x) for x in evals])
        if run.cfg.publish.enabled:
            summary["published"] = str(publish(run, adapter_dir, eval_result))
        (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        run.reporter.close()
    run.accelerator.wait_for_everyone()
    return summary


def run_training(cfg: Config) -> dict[str, Any]:
    run = setup(cfg)
    maybe_resume(run)
    train_loop(run)
    return finish(run)
