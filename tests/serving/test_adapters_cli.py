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


def test_config_and_gateway_before_or_after_the_action(setup, capsys) -> None:
    from serving.cli import GATEWAY_URL, adapters_parser

    config, _, outside = setup
    src = make_adapter(outside, "x", "v1")
    assert adapters_main(["publish", str(src), "bot@v1", "--config", str(config)]) == 0
    assert adapters_main(["list", "--config", str(config)]) == 0
    assert "bot@v1" in capsys.readouterr().out
    parse = adapters_parser().parse_args
    args = parse(["--config", "a.yaml", "load", "bot@v1", "--config", "b.yaml", "--url", "http://gw:9"])
    assert (args.config + args.config_after, args.gateway) == (["a.yaml", "b.yaml"], "http://gw:9")
    assert parse(["--gateway", "http://gw:8", "promote", "bot@v1"]).gateway == "http://gw:8"
    assert parse(["unload", "bot@v1"]).gateway == GATEWAY_URL


def test_list_marks_the_stable_version_and_aligns_columns(setup, capsys) -> None:
    from serving.config import load_config
    from serving.store import Store

    config, _, outside = setup
    for version in ("v1", "v2", "v10"):
        assert (
            adapters_main(
                ["--config", str(config), "publish", str(make_adapter(outside, version, "v1")), f"bot@{version}"]
            )
            == 0
        )
    assert (
        adapters_main(["--config", str(config), "publish", str(make_adapter(outside, "o", "v1")), "other-adapter@v3"])
        == 0
    )
    capsys.readouterr()
    assert adapters_main(["--config", str(config), "list"]) == 0  # no gateway ran: no pointer recorded yet
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MODEL", "STABLE", "SERVABLE", "EVAL", "/", "PROBLEM"]
    rows = {line.split()[0]: line for line in lines[1:5]}
    assert rows["bot@v1"].split()[1] == "stable*" and rows["other-adapter@v3"].split()[1] == "stable*"
    assert rows["bot@v2"].split()[1] == "ok"  # no mark
    assert len({line.index("ok") for line in lines[1:5]}) == 1  # the SERVABLE column lines up
    assert "first published version stable" in lines[-1]
    store = Store.open(load_config([config]))  # what a gateway and a promotion leave behind
    store.ensure_stable("bot", "v1")
    store.set_stable("bot", "v10", actor="test", reason="promoted")
    store.close()
    assert adapters_main(["--config", str(config), "list"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:5]}
    assert rows["bot@v10"][1] == "stable" and rows["bot@v1"][1] == "ok" and rows["other-adapter@v3"][1] == "stable*"
