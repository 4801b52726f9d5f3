"""`loraplane base add`: a checkpoint of your own becomes a registered base, or nothing is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.trainer.tiny_bases import make_tiny_base
from trainer.base_models import main, resolve_base, weights_sha256
from trainer.registry_contract import BASE_MANIFEST


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("ckpt") / "Tiny-Llama", "llama")


@pytest.fixture
def checkpoint(tiny_llama: Path, tmp_path: Path) -> Path:
    """A fresh copy to break."""
    return Path(shutil.copytree(tiny_llama, tmp_path / "ckpt"))


def add(src: Path, models: Path, *extra: str) -> int:
    return main(["add", str(src), "--models-dir", str(models), *extra])


def assert_nothing_written(models: Path) -> None:
    assert not models.exists() or list(models.iterdir()) == [], list(models.iterdir())


def test_add_copies_and_pins_the_weights(tiny_llama: Path, tmp_path: Path, capsys) -> None:
    models = tmp_path / "models"
    assert add(tiny_llama, models) == 0
    target = models / "tiny-llama"  # the directory name, lower-cased
    manifest = json.loads((target / BASE_MANIFEST).read_text())
    assert manifest["weights_sha256"] == weights_sha256(tiny_llama) == weights_sha256(target)
    assert manifest["architecture"] == "LlamaForCausalLM" and manifest["linked"] is False
    assert not (target / "model.safetensors").is_symlink() and not (tiny_llama / BASE_MANIFEST).exists()
    assert [p.name for p in models.iterdir()] == ["tiny-llama"]  # no temporary directory left
    assert resolve_base("tiny-llama", models) == target
    assert "registered" in capsys.readouterr().out


def test_link_registers_in_place_without_copying(tiny_llama: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    assert main(["--models-dir", str(models), "add", str(tiny_llama), "--name", "mine", "--link"]) == 0
    weights = models / "mine" / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (tiny_llama / "model.safetensors").resolve()
    assert json.loads((models / "mine" / BASE_MANIFEST).read_text())["linked"] is True


def test_a_registered_name_is_refused(tiny_llama: Path, tmp_path: Path, capsys) -> None:
    models = tmp_path / "models"
    assert add(tiny_llama, models, "--name", "mine") == 0
    before = (models / "mine" / BASE_MANIFEST).read_text()
    assert add(tiny_llama, models, "--name", "mine") == 2
    err = capsys.readouterr().err
    assert "'mine' is already registered" in err and "--name" in err
    assert (models / "mine" / BASE_MANIFEST).read_text() == before


def test_no_safetensors_weights(checkpoint: Path, tmp_path: Path, capsys) -> None:
    (checkpoint / "model.safetensors").rename(checkpoint / "pytorch_model.bin")
    assert add(checkpoint, tmp_path / "models") == 2
    err = capsys.readouterr().err
    assert "no *.safetensors" in err and "pytorch_model.bin" in err and "safe_serialization=True" in err
    assert_nothing_written(tmp_path / "models")


def test_truncated_weights(checkpoint: Path, tmp_path: Path, capsys) -> None:
    (checkpoint / "model.safetensors").write_bytes(b"\x00\x01")
    assert add(checkpoint, tmp_path / "models") == 2
    assert "model.safetensors is not a readable safetensors file" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "models")


def test_a_tokenizer_that_does_not_load(checkpoint: Path, tmp_path: Path, capsys) -> None:
    (checkpoint / "tokenizer.json").write_text("{not json")
    assert add(checkpoint, tmp_path / "models") == 2
    err = capsys.readouterr().err
    assert "tokenizer in" in err and "does not load" in err and "tokenizer.json" in err
    assert_nothing_written(tmp_path / "models")


def test_a_config_vllm_cannot_serve(checkpoint: Path, tmp_path: Path, capsys) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    assert add(checkpoint, tmp_path / "models") == 2
    err = capsys.readouterr().err
    assert "config.json names architecture 'BertForMaskedLM'" in err and "does not serve" in err
    assert_nothing_written(tmp_path / "models")


def test_a_missing_config_and_a_bad_name(checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert add(checkpoint, tmp_path / "models", "--name", "Not Ok") == 2
    assert "base name 'Not Ok' must match" in capsys.readouterr().err
    (checkpoint / "config.json").unlink()
    assert add(checkpoint, tmp_path / "models") == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "models")


def test_errors_name_the_command_that_registers_a_base(tmp_path: Path, capsys) -> None:
    from trainer.errors import BaseModelError

    with pytest.raises(BaseModelError, match=r"loraplane base add PATH --name deepseek-llm-7b"):
        resolve_base("deepseek-llm-7b", tmp_path)
    assert main(["pull", "deepseek-llm-7b"]) == 2
    assert "loraplane base add PATH --name deepseek-llm-7b" in capsys.readouterr().err


def test_serving_names_both_commands(tmp_path: Path) -> None:
    from serving.errors import NotFound
    from serving.registry import read_base

    with pytest.raises(NotFound, match=r"loraplane base add PATH --name mine.*loraplane base pull mine"):
        read_base(tmp_path, "mine")
