"""Which database, and getting it ready: URL resolution, safe display, connection, migrations."""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine, make_url

from serving.config import ServingConfig
from serving.errors import ConfigError, StoreUnavailable

URL_ENV = "LORAPLANE_STORE_URL"
SQLITE_FILE = "loraplane.db"
MIGRATIONS = Path(__file__).parent / "migrations"
PG_MIGRATION_LOCK = 7_265_109  # pg_advisory_lock key: one migrating replica at a time


def store_url(cfg: ServingConfig) -> str:
    """Env LORAPLANE_STORE_URL, else store.url, else SQLite `loraplane.db` in the adapters directory."""
    url = os.environ.get(URL_ENV) or cfg.store.url
    if url:
        return url
    return f"sqlite:///{(cfg.registry.adapters_dir / SQLITE_FILE).resolve()}"


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: show only the scheme
        return url.split(":", 1)[0] + "://..."


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer (several processes)
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each WAL checkpoint; safe with WAL
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def create_db_engine(url: str, connect_timeout_s: float = 5.0) -> Engine:
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(f"store.url {safe_url(url)!r} is not a database URL; e.g. postgresql+psycopg://...") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": connect_timeout_s, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":  # plain postgresql:// means psycopg 3 here
            parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=8,
            connect_args={"connect_timeout": max(1, int(connect_timeout_s))},
        )
    raise ConfigError(f"store.url {safe_url(url)!r}: only sqlite and postgresql databases are supported")


def check_reachable(engine: Engine) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StoreUnavailable(
            f"the control-plane database {engine.url.render_as_string(hide_password=True)} "
            f"is unreachable ({reason}); check store.url / {URL_ENV} and that the database is up"
        ) from None


def _alembic_config(conn: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def head_revision() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine) -> str | None:
    """Alembic upgrade to head (idempotent); returns the revision now in the database."""
    check_reachable(engine)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # replicas starting together: one migrates, the rest wait
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
        command.upgrade(_alembic_config(conn), "head")
    return current_revision(engine)
