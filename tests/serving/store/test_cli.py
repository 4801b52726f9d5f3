"""`loraplane store migrate|status`: the default SQLite file, env LORAPLANE_STORE_URL over store.url,
and a clear error without the password when the database is down."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import load_config
from serving.store.cli import main
from serving.store.connect import head_revision, store_url
from tests.conftest import free_port


def write_config(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "serving.yaml"
    config.write_text(f"registry:\n  adapters_dir: {tmp_path / 'adapters'}\n{extra}")
    return config


def test_default_is_sqlite_in_the_adapters_dir(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("LORAPLANE_STORE_URL", raising=False)
    config = write_config(tmp_path)
    assert main(["status", "--config", str(config)]) == 0
    head = head_revision()
    assert f"revision None of {head}: needs `loraplane store migrate`" in capsys.readouterr().out
    assert main(["migrate", "--config", str(config)]) == 0
    assert (tmp_path / "adapters" / "loraplane.db").is_file()
    assert main(["status", "--config", str(config)]) == 0
    assert f"revision {head} of {head}: up to date" in capsys.readouterr().out


def test_env_url_overrides_the_config(tmp_path: Path, monkeypatch, postgres_server_url: str, capsys) -> None:
    from tests.serving.conftest import new_postgres_database

    url = new_postgres_database(postgres_server_url)
    config = write_config(tmp_path, f"store:\n  url: sqlite:///{tmp_path / 'unused.db'}\n")
    monkeypatch.setenv("LORAPLANE_STORE_URL", url)
    assert store_url(load_config(config)) == url
    assert main(["migrate", "--config", str(config)]) == 0
    assert "postgresql+psycopg" in capsys.readouterr().out and not (tmp_path / "unused.db").exists()


def test_unreachable_database_is_exit_2_without_the_password(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LORAPLANE_STORE_URL", f"postgresql://lp:s3cret@127.0.0.1:{free_port()}/lp")
    config = write_config(tmp_path, "store:\n  connect_timeout_s: 1\n")
    assert main(["migrate", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and "lp:***@127.0.0.1" in err and "s3cret" not in err


@pytest.mark.parametrize("bad", ["mysql://x/y", "not a url"])
def test_unsupported_urls_are_refused_by_name(tmp_path: Path, monkeypatch, capsys, bad: str) -> None:
    monkeypatch.setenv("LORAPLANE_STORE_URL", bad)
    assert main(["migrate", "--config", str(write_config(tmp_path))]) == 2
    assert "store.url" in capsys.readouterr().err
