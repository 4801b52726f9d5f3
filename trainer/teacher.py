"""Distillation teachers: logits at the student's answer positions, computed under no_grad.

distill.teacher is either a local HF model directory (a second model, frozen; its tokenizer
must equal the student's) or an adapter on the student's own base (NAME@vN, adapters/NAME/vN, a
run's adapter dir): then it is loaded as a second, frozen PEFT adapter on the same base model
and switched on for the teacher's forward, so no second copy of the base is held.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trainer.adapters import check_same_base, resolve_adapter
from trainer.errors import ConfigError
from trainer.objectives.logps import answer_logits

TEACHER_ADAPTER = "teacher"


class ModelTeacher:
    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return answer_logits(self.model, batch)[0]


class AdapterTeacher:
    """The teacher adapter on the student's PEFT model; grads flags are restored after each use."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        flags = [(p, p.requires_grad) for p in self.peft_model.parameters()]
        training = self.peft_model.training
        self.peft_model.base_model.set_adapter(TEACHER_ADAPTER, inference_mode=True)
        self.peft_model.eval()  # no dropout in the teacher
        try:
            return answer_logits(self.peft_model, batch)[0]
        finally:
            self.peft_model.base_model.set_adapter("default")
            self.peft_model.train(training)
            for p, flag in flags:
                p.requires_grad_(flag)


def _vocab_problem(teacher_tokenizer, student_tokenizer) -> str | None:
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        return f"vocabularies differ ({len(teacher_tokenizer)} vs {len(student_tokenizer)} tokens)"
    if teacher_tokenizer.eos_token != student_tokenizer.eos_token:
        return f"eos tokens differ ({teacher_tokenizer.eos_token!r} vs {student_tokenizer.eos_token!r})"
    return None


def load_teacher(
    ref: str, peft_model, tokenizer, base_dir: Path, base_manifest: dict[str, Any], adapters_dir: Path, dtype
):
    """Checked before training: same tokenizer (model teacher) or same base checksum (adapter teacher)."""
    path = Path(ref)
    if (path / "config.json").is_file():  # a full model directory
        from transformers import AutoModelForCausalLM, AutoTokenizer

        problem = _vocab_problem(AutoTokenizer.from_pretrained(path), tokenizer)
        if problem:
            raise ConfigError(
                f"distill.teacher: tokenizer of {path} does not match the student's ({base_dir}): {problem}; "
                "distillation compares logits token by token, so both must share one tokenizer"
            )
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return ModelTeacher(model.to(next(peft_model.parameters()).device))
    adapter = resolve_adapter(ref, adapters_dir, "distill.teacher")
    check_same_base(adapter, base_manifest, base_dir, "distill.teacher")
    peft_model.load_adapter(str(adapter.path), adapter_name=TEACHER_ADAPTER, is_trainable=False)
    peft_model.base_model.set_adapter("default")  # load_adapter leaves the student active; be sure
    return AdapterTeacher(peft_model)
