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
from pathlib import Path
from typing import Any

import torch

from trainer import adalora, checkpoint
from trainer.adapters import AdapterRef, check_same_base, resolve_adapter
from trainer.base_models import read_manifest, resolve_base
from trainer.checkpoint import RunState
from trainer.config import Config
from trainer.dashboard import grad_norm, lora_histograms
from trainer.errors import ConfigError, PublishError
from trainer.evaluation.during_training import final_eval, periodic_eval, restore_best
from trainer.model import (
    add_lora,
    choose_precision,
    load_base_model,
    load_tokenizer,
    make_accelerator,
    trainable_parameters,
)
from trainer.objectives import Setting, objective_for
from trainer.publish import check_servable
from trainer.report import Reporter
from trainer.run import Run
from trainer.tokens import Batches, apply_template_override, encode_all, template_record


def lr_lambda(step: int, max_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier on the peak lr: linear warmup over warmup_steps, then cosine/linear decay."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


def precheck(cfg: Config) -> AdapterRef | None:
    """Fail before any work on what would only fail at the end; returns lora.init_from's adapter."""
    cfg.publish.require_target()
    parent = (
        resolve_adapter(cfg.lora.init_from, Path(cfg.publish.adapters_dir), "lora.init_from")
        if (cfg.lora.init_from)
        else None
    )
    if cfg.publish.enabled:
        adalora.check_rank_budget(cfg.lora, cfg.publish.max_lora_rank)  # AdaLoRA: its own message first
        lora = {
            "r": adalora.planned_rank(cfg.lora),
            "use_dora": cfg.lora.use_dora,
            "modules_to_save": cfg.lora.modules_to_save,
        }
        check_servable(parent.adapter_config if parent else lora, cfg.publish.max_lora_rank)
        target = Path(cfg.publish.adapters_dir) / cfg.publish.name / cfg.publish.version
        if target.exists():
            raise PublishError(
                f"{target} already exists; published versions are immutable, choose a new --publish.version"
            )
    return parent


def build_model(cfg: Config, base_dir: Path, manifest: dict, precision, device, parent: AdapterRef | None):
    """The base with a fresh LoRA adapter, or with lora.init_from's adapter, trainable."""
    model = load_base_model(base_dir, cfg.model, precision, device)
    base_name = str(manifest.get("name") or base_dir.name)
    if parent is None:
        return add_lora(model, cfg.lora, base_name, cfg.train.max_steps)
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(parent.path), is_trainable=True)
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    return peft_model


def setup(cfg: Config) -> Run:
    from accelerate.utils import set_seed

    parent = precheck(cfg)
    precision = choose_precision(cfg.model.precision)
    accelerator = make_accelerator(precision)
    set_seed(cfg.train.seed)
    base_dir = resolve_base(cfg.base, Path(cfg.models_dir))
    manifest = read_manifest(base_dir)
    if parent is not None:
        check_same_base(parent, manifest, base_dir, "lora.init_from")
    tokenizer = load_tokenizer(base_dir)
    apply_template_override(tokenizer, cfg.data.chat_template)
    method = objective_for(cfg.train.method)  # owns the data format, the reference and the loss
    train_data, eval_data = method.load_data(cfg)
    examples = method.encode_train(cfg, tokenizer, train_data)
    eval_conversations = method.eval_conversations(eval_data) if eval_data else []
    eval_examples = encode_all(tokenizer, eval_conversations, cfg.data.max_seq_len)[0]
    eval_items = method.encode_eval(cfg, tokenizer, eval_data) if eval_data else []
    model = build_model(cfg, base_dir, manifest, precision, accelerator.device, parent)
    params = [p for p in model.parameters() if p.requires_grad]
    setting = Setting(cfg, tokenizer, base_dir, manifest, precision.dtype, accelerator.device, parent is None)
    objective = method.build(model, setting)
    batches = Batches(
        examples, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.seed, cfg.train.length_grouping,
        accelerator.num_processes, accelerator.process_index,
    )  # fmt: skip
    # reference = the starting point, before any step, on what steps 0..max_steps-1 will train on
    micro_batches = (micro for step in range(cfg.train.max_steps) for micro in batches.for_step(step)[0])
    objective.setup_reference(micro_batches, eval_items, setting)
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warmup = math.ceil(cfg.train.warmup_ratio * cfg.train.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_lambda(s, cfg.train.max_steps, warmup, cfg.train.scheduler, cfg.train.min_lr_ratio),
    )
    prepared, optimizer = accelerator.prepare(objective, optimizer)
    reporter = Reporter(Path(cfg.out_dir), accelerator.is_main_process)
    run = Run(
        cfg, accelerator, tokenizer, prepared, optimizer, scheduler, batches, train_data, eval_data,
        eval_conversations, eval_examples, base_dir, manifest, reporter, setting, eval_items, parent,
    )  # fmt: skip
    trainable, total = trainable_parameters(model)
    run.log(
        f"base {base_dir.name}: method {cfg.train.method}, precision {precision.name}, quantization "
        f"{cfg.model.quantization}, trainable {trainable / 1e6:.2f}M of {total / 1e6:.1f}M params"
        + (f", from adapter {parent.path}" if parent else "")
        + f", {len(examples)} train rows ({train_data.skipped} bad lines skipped)",
    )
    return run


def accumulate_gradients(run: Run, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], int, int]:
    """Backward over this process's micro-batches of `step`; grads end up = d(step loss)/dθ.

    Returns (this process's summed loss, its summed metrics, the step's total weight (trained
    tokens, or pairs for dpo) over all processes, all tokens of the step). AdaLoRA's orthogonal
    regulariser joins the first micro-batch's backward, so it weighs once per step whatever the
    accumulation; it is not in the returned loss (train/loss), but in the metric orth_reg.
    """
    micro_batches, trained, tokens = run.batches.for_step(step)
    processes = run.accelerator.num_processes
    scale = processes / max(trained, 1)  # DDP averages grads over processes
    loss_sum = torch.zeros((), device=run.accelerator.device)
    metric_sums: dict[str, torch.Tensor] = {}
    for i, micro in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = nullcontext() if last else run.accelerator.no_sync(run.model)
        batch = run.objective.collate(micro, run.tokenizer.pad_token_id)
        batch = {k: v.to(run.accelerator.device) for k, v in batch.items()}
        with sync:
            with run.accelerator.autocast():
                loss, metrics = run.model(batch)
            step_loss = loss * scale  # this micro-batch's share of the step's mean loss
            reg = adalora.orth_reg_term(run.peft_model) if i == 0 else None  # AdaLoRA: once per step
            if reg is not None:  # same on every process; x processes undoes DDP's average
                step_loss = step_loss + reg * processes
                metrics = metrics | {"orth_reg": reg.detach() * trained / processes}  # reads back as reg
            run.accelerator.backward(step_loss)
        loss_sum += loss.detach()
        for key, value in metrics.items():
            metric_sums[key] = metric_sums.get(key, 0) + value
    return loss_sum, metric_sums, trained, tokens


def clip_gradients(run: Run, norm: torch.Tensor) -> None:
    """train.max_grad_norm: scale every LoRA gradient by min(1, max / norm), as torch's clip_grad_norm_."""
    max_norm = run.cfg.train.max_grad_norm
    if max_norm is None:
        return
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in run.model.parameters():
        if p.requires_grad and p.grad is not None:
            p.grad.detach().mul_(coef.to(p.grad.device))


def train_step(run: Run, step: int) -> tuple[float, int]:
    """One optimizer step; returns (loss per unit of weight, tokens in the step).

    The step's other scalars (grad norm, the objective's metrics) land in run.step_scalars.
    """
    loss_sum, metric_sums, trained, tokens = accumulate_gradients(run, step)
    run.accelerator.unscale_gradients()  # fp16: undo loss scaling, so the norm and the clip see real gradients
    norm = grad_norm(run)
    scalars = {"train/grad_norm": float(norm)}  # before clipping
    clip_gradients(run, norm)
    every = run.cfg.train.histogram_every
    if every and (step + 1) % every == 0:
        run.reporter.histograms(step + 1, lora_histograms(run))
    run.optimizer.step()
    adalora.after_optimizer_step(run.peft_model, step)  # AdaLoRA's rank budget; needs this step's grads
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    total = run.accelerator.reduce(loss_sum, reduction="sum")
    for key, value in metric_sums.items():
        scalars[f"train/{key}"] = float(run.accelerator.reduce(value, reduction="sum")) / max(trained, 1)
    run.step_scalars = scalars
    return float(total) / max(trained, 1), tokens


def resume_fingerprint(cfg: Config) -> dict[str, Any]:
    """Config keys that must match for a checkpoint to be resumed (max_steps may grow)."""
    values = cfg.to_dict()
    ignored = ("max_steps", "log_every", "eval_every", "histogram_every")
    return {k: values[k] for k in ("base", "model", "lora", "data", "dpo", "distill", "kto")} | {
        "train": {k: v for k, v in values["train"].items() if k not in ignored}
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
            shutil.rmtree(root / checkpoint.BEST_DIR, ignore_errors=True)
        run.state = RunState(fingerprint=resume_fingerprint(run.cfg))
        return
    state = checkpoint.restore(path, run.peft_model, run.optimizer, run.scheduler, run.accelerator.process_index)
    if state.fingerprint != resume_fingerprint(run.cfg):
        raise ConfigError(f"{path} was written with a different config; use a fresh out_dir or pass --resume false")
    run.state = state
    run.log(f"resumed from {path} at step {state.step}")


def save_checkpoint(run: Run, step: int) -> None:
    root = run.out_dir / "checkpoints"
    checkpoint.write_process_rng(root, step, run.accelerator.process_index)
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        checkpoint.commit(root, step, run.peft_model, run.optimizer, run.scheduler, run.state)
    run.accelerator.wait_for_everyone()


def train_loop(run: Run) -> None:
    from tqdm.auto import tqdm

    cfg, state = run.cfg.train, run.state
    bar = tqdm(
        total=cfg.max_steps, initial=state.step, unit="step", dynamic_ncols=True,
        disable=not run.accelerator.is_main_process,
    )  # fmt: skip
    seen_tokens, started = 0, time.perf_counter()
    run.model.train()
    for step in range(state.step, cfg.max_steps):
        loss, tokens = train_step(run, step)
        done = step + 1
        seen_tokens += tokens
        tok_s = seen_tokens / (time.perf_counter() - started)  # all processes' tokens, incl. padding-free
        state.step = done
        state.train_losses.append([done, loss])
        lr = run.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:.0f}")
        bar.update(1)
        if done % max(cfg.log_every, 1) == 0:
            logged = {"train/loss": loss, "train/lr": lr, "train/tokens_per_s": tok_s}
            run.reporter.scalars(done, logged | run.step_scalars)
        periodic = bool(run.eval_examples and cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.max_steps)
        stop = periodic and periodic_eval(run, done)  # the last step's eval is the final eval
        if cfg.save_every and done % cfg.save_every == 0:
            save_checkpoint(run, done)
        if stop:
            break
    bar.close()
    state.train_seconds += time.perf_counter() - started
    state.tokens_per_s = seen_tokens / max(time.perf_counter() - started, 1e-9)


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
        "chat_template": template_record(run.tokenizer, run.cfg.data.chat_template),
    }


def adapter_manifest(run: Run, eval_result: dict[str, Any]) -> dict[str, Any]:
    """The registry manifest (docs/registry.md), with `parent` = lora.init_from's adapter or null."""
    from trainer.publish import build_manifest

    pub = run.cfg.publish
    manifest = build_manifest(name=pub.name, version=pub.version, eval_result=eval_result, **manifest_parts(run))
    return manifest | {"parent": run.parent.parent if run.parent else None}


def save_adapter(run: Run, eval_result: dict[str, Any]) -> Path:
    """out_dir/adapter: the PEFT adapter (only the trained one) and its manifest beside it."""
    adapter_dir = run.out_dir / "adapter"
    adalora.save_adapter(run.peft_model, adapter_dir)  # AdaLoRA is saved as the equivalent plain LoRA
    (adapter_dir / "loraplane-adapter.json").write_text(json.dumps(adapter_manifest(run, eval_result), indent=2))
    return adapter_dir


def publish(run: Run, adapter_dir: Path, eval_result: dict[str, Any]) -> Path:
    from trainer.publish import publish_adapter

    pub = run.cfg.publish
    manifest = adapter_manifest(run, eval_result)
    return publish_adapter(
        adapter_dir, Path(pub.adapters_dir), pub.name, pub.version, manifest, pub.max_lora_rank, run.base_manifest
    )


def finish(run: Run) -> dict[str, Any]:
    """Best weights back, final eval, save the adapter and loss plot, publish; returns summary.json."""
    restore_best(run)
    eval_result = final_eval(run)
    state = run.state
    summary: dict[str, Any] = {
        "method": run.cfg.train.method,
        "steps": state.step,
        "best_step": state.best_step,
        "eval": eval_result,
        "published": None,
        "train_seconds": state.train_seconds,
        "tokens_per_s": state.tokens_per_s,
        "train_losses": state.train_losses,  # [step, loss], continued across resumes
    }
    if run.accelerator.is_main_process:
        adapter_dir = save_adapter(run, eval_result)
        summary["adapter"] = str(adapter_dir)
        final = {"eval/loss": eval_result["eval_loss"], "eval/exact_match": eval_result["value"]}
        run.reporter.scalars(state.step, {k: v for k, v in final.items() if v is not None})
        evals = state.eval_losses + ([[state.step, eval_result["eval_loss"]]] if final["eval/loss"] else [])
        run.reporter.plot_losses([tuple(x) for x in state.train_losses], [tuple(x) for x in evals])
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
