"""The interface every training objective implements; the loop never asks which method runs.

An objective (one class per train.method, registered in trainer/objectives/__init__.py) owns
what differs between methods:

    load_data(cfg)                       -> (train Dataset, eval Dataset | None) in its row format
    encode_train(cfg, tokenizer, data)   -> the items micro-batches are made of (rows, pairs, rated rows)
    encode_eval(cfg, tokenizer, data)    -> eval items that eval_metrics scores ([] for none)
    eval_conversations(data)             -> eval conversations ending in the answer to imitate
                                            (eval loss and exact match of every method)
    build(causal_lm, setting)            -> the loss module around the PEFT model
    obj.setup_reference(micro_batches, eval_items, setting)  reference numbers, once, before step 0
    obj.collate(items, pad_id) -> batch;  obj(batch) -> (summed loss, {metric: summed value})
    obj.eval_metrics(eval_items, setting) -> {metric: value}

Losses and metrics are sums; the loop divides by the step's total weight (`item.n_trained`:
trained tokens for sft/distill, 1 per pair or rated row for dpo/kto), so gradient accumulation
and several processes give the gradient of one big batch. An objective is a torch module so DDP
can wrap it; the model it trains is `objective.causal_lm` (the PEFT model).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from trainer.config import Config
from trainer.data import Dataset, Messages, load_dataset_file, split_validation
from trainer.errors import ConfigError, DataError
from trainer.preferences import is_preference_file, is_rated_file
from trainer.tokens import Encoded, collate, encode_all, pack


@dataclass
class Setting:
    """What an objective's set-up reads from the run: config, tokenizer, base and device."""

    cfg: Config
    tokenizer: Any
    base_dir: Path
    base_manifest: dict[str, Any]
    dtype: torch.dtype  # the base weights' dtype (a distillation teacher is loaded in it)
    device: Any
    reference_adapter_off: bool  # a fresh adapter: the starting point is the base (adapter switched off)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def require_examples(cfg: Config, examples: list, dropped: int) -> None:
    if not examples:
        raise DataError(
            f"{cfg.data.train}: all {dropped} examples lost their answers to truncation at "
            f"data.max_seq_len={cfg.data.max_seq_len}; raise data.max_seq_len"
        )


class Objective(torch.nn.Module):
    """Defaults are supervised fine-tuning's: chat data files, no reference, no eval items."""

    name: ClassVar[str]

    def __init__(self, causal_lm):
        super().__init__()
        self.causal_lm = causal_lm

    @classmethod
    def load_file(cls, cfg: Config, path: str) -> Dataset:
        """A chat/SFT data file (any format trainer/data.py reads); pairs and ratings are refused."""
        if is_preference_file(path):
            raise ConfigError(f"{path} holds preference pairs (chosen/rejected); train them with --train.method dpo")
        if is_rated_file(path):
            raise ConfigError(f"{path} holds rated answers (label true/false); train them with --train.method kto")
        return load_dataset_file(path, cfg.data.format, cfg.data.skip_bad_lines)

    @classmethod
    def load_data(cls, cfg: Config) -> tuple[Dataset, Dataset | None]:
        train = cls.load_file(cfg, cfg.data.train)
        if cfg.data.eval is not None:
            return train, cls.load_file(cfg, cfg.data.eval)
        if cfg.data.val_ratio > 0:
            return split_validation(train, cfg.data.val_ratio, cfg.data.seed)
        return train, None

    @classmethod
    def encode_train(cls, cfg: Config, tokenizer, data: Dataset) -> list:
        examples, dropped = encode_all(tokenizer, data.conversations, cfg.data.max_seq_len)
        require_examples(cfg, examples, dropped)
        return pack(examples, cfg.data.max_seq_len, cfg.data.seed) if cfg.data.packing else examples

    @classmethod
    def encode_eval(cls, cfg: Config, tokenizer, data: Dataset) -> list:
        return []

    @classmethod
    def eval_conversations(cls, data: Dataset) -> list[Messages]:
        return data.conversations

    @classmethod
    def build(cls, causal_lm, setting: Setting) -> Objective:
        return cls(causal_lm)

    def setup_reference(self, micro_batches: Iterable[list], eval_items: list, setting: Setting) -> None:
        """Reference numbers for what steps 0..max_steps-1 train on; none by default."""

    def collate(self, items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(items, pad_id)

    def eval_metrics(self, eval_items: list, setting: Setting) -> dict[str, float]:
        """Method-specific eval numbers on encode_eval's items; "pairs"/"rows" are counts."""
        return {}
