"""`loraplane adapters publish|list`: validated, atomic, immutable versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.cli import adapters_main
from tests.serving.test_registry import make_adapter

BASE = "tiny-base"


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    models, adapters, outside = tmp_path / "models", tmp_path / "adapters", tmp_path / "outside"
    (models / BASE).mkdir(parents=True)
    (models / BASE / "loraplane-base.json").write_text(json.dumps({"name": BASE, "weights_sha256": "a" * 64}))
    config = tmp_path / "serving.yaml"
    config.write_text(f"base: {BASE}\nregistry: {{models_dir: {models}, adapters_dir: {adapters}}}\n")
    return config, adapters, outside


def test_publish_then_list(setup, capsys) -> None:
    config, adapters, outside = setup
    src = make_adapter(outside, "x", "v1")
    assert adapters_main(["--config", str(config), "publish", str(src), "bot@v3"]) == 0
    published = adapters / "bot" / "v3"
    assert json.loads((published / "loraplane-adapter.json").read_text())["version"] == "v3"
    assert adapters_main(["--config", str(config), "publish", str(src), "bot@v3"]) == 2  # immutable
    assert "already exists" in capsys.readouterr().err
    assert adapters_main(["--config", str(config), "list"]) == 0
    assert "bot@v3" in capsys.readouterr().out


def test_rejected_publish_leaves_nothing(setup, capsys) -> None:
    config, adapters, outside = setup
    src = make_adapter(outside, "x", "v1", r=64)
    assert adapters_main(["--config", str(config), "publish", str(src), "bot@v1"]) == 2
    assert "rank 64" in capsys.readouterr().err
    assert not (adapters / "bot" / "v1").exists()
    assert [p.name for p in (adapters / "bot").iterdir()] == []  # no temp dir left behind


def test_wrong_base_rejected_naming_both_checksums(setup, capsys) -> None:
    config, _, outside = setup
    src = make_adapter(outside, "x", "v1", base_sha="c" * 64)
    assert adapters_main(["--config", str(config), "publish", str(src), "bot@v1"]) == 2
    err = capsys.readouterr().err
    assert "cccccccccccc" in err and "aaaaaaaaaaaa" in err


def test_path_like_name_refused(setup, capsys) -> None:
    config, _, outside = setup
    src = make_adapter(outside, "x", "v1")
    assert adapters_main(["--config", str(config), "publish", str(src), "../evil@v1"]) == 2
