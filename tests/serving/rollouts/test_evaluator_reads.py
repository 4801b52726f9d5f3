"""The evaluator is not blind past rollouts.max_requests (issue 20 point 3): it decides on the
rollout's per-unit aggregates (Store.rollout_units), so a candidate failing every request logged
after that many control rows is rolled back. Real PostgreSQL."""

from __future__ import annotations

import time

from serving.config import RolloutsConfig
from serving.metrics import GatewayMetrics
from serving.rollouts.actions import new_rollout
from serving.rollouts.evaluator import Evaluator
from serving.rollouts.policy import GuardSpec
from serving.store import RequestRecord, Store
from serving.store.connect import create_db_engine, migrate
from tests.serving.conftest import new_postgres_database


def test_a_candidate_failing_after_max_requests_rows_is_rolled_back(postgres_server_url: str) -> None:
    store = Store(create_db_engine(new_postgres_database(postgres_server_url)))
    migrate(store.engine)
    cfg = RolloutsConfig(max_requests=200, lease_s=5.0)
    spec = cfg.spec(
        steps=(50, 100), min_samples=20, promote_when="no_regression", guards=(GuardSpec("error_rate", 0.0),)
    )
    store.ensure_stable("bot", "v1")
    store.create_rollout(new_rollout("r", "bot@v2", "bot@v1", spec, "none", time.time()), actor="admin")
    t0 = time.time() + 0.01

    def record(i: int, variant: str, error: bool) -> RequestRecord:
        r = RequestRecord(
            f"id-{i}", t0 + i * 1e-3, "chat", "bot", variant, "k", 500 if error else 200, 0.1, rollout="r"
        )
        r.unit, r.step, r.outcome = f"{i % 60:032x}", 0, "error" if error else "ok"
        return r

    store.write_requests([record(i, "bot@v1", False) for i in range(300)])  # the oldest rows: control, clean
    store.write_requests([record(300 + i, "bot@v2", True) for i in range(200)])  # then the candidate fails always
    decisions = Evaluator(store, cfg, GatewayMetrics(), holder="A").tick()
    store.close()
    assert [(name, d.outcome) for name, d in decisions] == [("r", "rollback")]
