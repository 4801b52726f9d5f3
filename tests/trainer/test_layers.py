"""lora.layers: parsing, and a clear error for layers the base does not have."""

from __future__ import annotations

import pytest

from trainer.config import load_config
from trainer.errors import ConfigError
from trainer.model import check_layers, peft_lora_config


@pytest.mark.parametrize(
    ("value", "layers"),
    [("20-22", [20, 21, 22]), ("[3, 1, 3]", [1, 3]), ("5", [5]), ("0,2, 4-5", [0, 2, 4, 5])],
)
def test_layers_parse(value, layers):
    cfg = load_config(None, ["--lora.layers", value])
    assert cfg.lora.layers == layers
    assert peft_lora_config(cfg.lora).layers_to_transform == layers


@pytest.mark.parametrize("value", ["29-20", "a-b", "-3", "[]"])
def test_bad_layer_lists_are_named(value):
    with pytest.raises(ConfigError, match="lora.layers"):
        load_config(None, ["--lora.layers", value])


def test_layer_outside_the_base_is_refused_naming_it():
    cfg = load_config(None, ["--lora.layers", "25-30"])
    check_layers(cfg.lora, 31)
    with pytest.raises(ConfigError, match=r"layer 30 does not exist; the base has 30 decoder layers \(0-29\)"):
        check_layers(cfg.lora, 30)


def test_layers_need_named_target_modules():
    with pytest.raises(ConfigError, match="not 'all-linear'"):
        load_config(None, ["--lora.layers", "1-2", "--lora.target_modules", "all-linear"])
