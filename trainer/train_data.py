"""The run's data: files by train.method (chat/SFT rows or preference pairs), encoded for training."""

from __future__ import annotations

from trainer.config import Config
from trainer.data import Dataset, load_dataset_file, split_validation
from trainer.errors import ConfigError, DataError
from trainer.objectives import Pair
from trainer.preferences import is_preference_file, load_preference_file
from trainer.tokens import Encoded, encode_all, pack


def load_file(cfg: Config, path: str) -> Dataset:
    if cfg.train.method == "dpo":
        return load_preference_file(path, cfg.data.skip_bad_lines)
    if is_preference_file(path):
        raise ConfigError(f"{path} holds preference pairs (chosen/rejected); train them with --train.method dpo")
    return load_dataset_file(path, cfg.data.format, cfg.data.skip_bad_lines)


def load_data(cfg: Config) -> tuple[Dataset, Dataset | None]:
    train = load_file(cfg, cfg.data.train)
    if cfg.data.eval is not None:
        return train, load_file(cfg, cfg.data.eval)
    if cfg.data.val_ratio > 0:
        return split_validation(train, cfg.data.val_ratio, cfg.data.seed)
    return train, None


def encode_pairs(tokenizer, data: Dataset, max_seq_len: int) -> list[Pair]:
    """Preference pairs as token ids; a pair whose either answer was truncated away is dropped."""
    pairs = []
    for chosen, rejected in zip(data.conversations, data.rejected, strict=True):
        encoded, dropped = encode_all(tokenizer, [chosen, rejected], max_seq_len)
        if not dropped:
            pairs.append(Pair(*encoded))
    return pairs


def encode_train(cfg: Config, tokenizer, data: Dataset) -> list[Encoded] | list[Pair]:
    if cfg.train.method == "dpo":
        examples: list = encode_pairs(tokenizer, data, cfg.data.max_seq_len)
        dropped = len(data.conversations) - len(examples)
    else:
        examples, dropped = encode_all(tokenizer, data.conversations, cfg.data.max_seq_len)
    if not examples:
        raise DataError(
            f"{cfg.data.train}: all {dropped} examples lost their answers to truncation at "
            f"data.max_seq_len={cfg.data.max_seq_len}; raise data.max_seq_len"
        )
    if cfg.data.packing and cfg.train.method != "dpo":
        examples = pack(examples, cfg.data.max_seq_len, cfg.data.seed)
    return examples
