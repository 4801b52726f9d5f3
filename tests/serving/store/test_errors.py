"""Database failures leave the store as serving errors (what the gateway answers with), never as
SQLAlchemy's: an unreachable database is StoreUnavailable naming it without the password; a value
the column cannot hold (real PostgreSQL) is BadRequest."""

from __future__ import annotations

import pytest

from serving.errors import BadRequest, StoreUnavailable
from serving.store import RolloutRecord, Store
from serving.store.connect import create_db_engine, migrate
from tests.serving.conftest import new_postgres_database


def test_an_unreachable_database_is_store_unavailable_naming_it_without_the_password() -> None:
    store = Store(create_db_engine("postgresql://loraplane:hunter2@127.0.0.1:1/loraplane", connect_timeout_s=1))
    for call in (
        lambda: store.put_experiment("exp", {"bot@v1": 100}, actor="ops"),
        store.snapshot,
        lambda: store.rollout_units("r", ttft_threshold_s=None),
        lambda: store.acquire_lease("evaluator", "a", 10),
    ):
        with pytest.raises(StoreUnavailable) as err:
            call()
        assert "127.0.0.1:1/loraplane" in err.value.message and "hunter2" not in err.value.message
        assert err.value.status == 503


def test_a_value_too_long_for_its_column_is_a_bad_request(postgres_server_url: str) -> None:
    store = Store(create_db_engine(new_postgres_database(postgres_server_url)))
    migrate(store.engine)
    name = "r" * 100  # rollouts.name is VARCHAR(64)
    with pytest.raises(BadRequest, match="does not fit"):
        store.create_rollout(RolloutRecord(name, "bot", "bot@v2", "bot@v1", "running", {}), actor="ops")
    assert store.list_rollouts() == []
    store.close()
