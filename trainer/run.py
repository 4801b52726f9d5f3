"""The state of one training run that the recipe's steps share (setup fills it, the loop advances it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.adapters import AdapterRef
from trainer.checkpoint import RunState
from trainer.config import Config
from trainer.data import Dataset, Messages
from trainer.objectives import Setting
from trainer.report import Reporter
from trainer.tokens import Batches, Encoded


@dataclass
class Run:
    cfg: Config
    accelerator: Any
    tokenizer: Any
    model: Any  # the objective (trainer/objectives/) around the PEFT model, accelerate-prepared (maybe DDP)
    optimizer: Any
    scheduler: Any
    batches: Batches
    train_data: Dataset
    eval_data: Dataset | None
    eval_conversations: list[Messages]  # the objective's eval conversations: exact match references
    eval_examples: list[Encoded]  # the same, encoded: eval loss
    base_dir: Path
    base_manifest: dict
    reporter: Reporter
    setting: Setting  # what the objective's reference and eval metrics read
    eval_items: list = field(default_factory=list)  # the objective's eval items (dpo pairs, kto rows), with reference
    parent: AdapterRef | None = None  # lora.init_from
    state: RunState = field(default_factory=RunState)
    step_scalars: dict[str, float] = field(default_factory=dict)  # the last step's grad norm, metrics

    @property
    def objective(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def peft_model(self):
        return self.objective.causal_lm

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out_dir)

    def log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            from tqdm.auto import tqdm

            tqdm.write(message)
