"""The store on real SQLite and PostgreSQL: migrations, every write audited and versioned,
stable pointers, rollouts, request log, feedback upserts, leases, body retention."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from serving.errors import Conflict, NotFound
from serving.store import FeedbackRecord, RequestRecord, RolloutRecord, Store
from serving.store.connect import create_db_engine, current_revision, head_revision, migrate
from serving.store.models import Base


def request(rid: str, key: str = "alice", rollout: str | None = None, variant: str = "bot@v1") -> RequestRecord:
    return RequestRecord(rid, time.time(), "chat", "bot", variant, key, 200, 0.05, rollout=rollout, ttft_s=0.01)


def test_migrations_reach_head_match_the_models_and_are_idempotent(store: Store) -> None:
    assert current_revision(store.engine) == head_revision() == "0007"
    migrate(store.engine)  # a second run (another replica, the Helm job) changes nothing
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_experiment_changes_bump_the_version_and_are_audited(store: Store) -> None:
    v0 = store.version()
    store.put_experiment("exp", {"bot@v1": 90, "bot@v2": 10}, actor="ops", reason="canary")
    store.put_experiment("exp", {"bot@v1": 50, "bot@v2": 50}, actor="ops", capture="bodies")
    snap = store.snapshot()
    assert snap.version == v0 + 2
    assert snap.experiments["exp"].variants == {"bot@v1": 50, "bot@v2": 50}
    assert snap.experiments["exp"].capture == "bodies"
    audit = store.audit_log("exp")
    assert [a.action for a in audit] == ["experiment.put", "experiment.put"]
    assert audit[0].actor == "ops" and audit[0].reason == "canary"
    assert audit[1].numbers == {"before": {"bot@v1": 90, "bot@v2": 10}, "after": {"bot@v1": 50, "bot@v2": 50}}
    assert not store.seed_experiment("exp", {"bot@v1": 1})  # the store's copy wins over the config's
    store.delete_experiment("exp", actor="ops")
    assert "exp" not in store.snapshot().experiments
    with pytest.raises(NotFound, match="exp"):
        store.delete_experiment("exp", actor="ops")


def test_stable_pointer_first_wins_then_moves_only_by_set(store: Store) -> None:
    assert store.ensure_stable("bot", "v1") == "v1"
    assert store.ensure_stable("bot", "v2") == "v1"  # already stable: a newer version changes nothing
    assert store.set_stable("bot", "v2", actor="ops", reason="promote") == "v1"
    assert store.stable_versions() == {"bot": "v2"}
    actions = [(a.action, a.numbers) for a in store.audit_log("bot")]
    assert actions == [("stable.init", {"version": "v1"}), ("stable.set", {"from": "v1", "to": "v2"})]


def test_rollout_lifecycle_conflicts_and_promotion_moves_stable(store: Store) -> None:
    rollout = RolloutRecord(
        "r1", "bot", "bot@v2", "bot@v1", "running", {"bot@v1": 90, "bot@v2": 10}, {"steps": [10, 50, 100]}
    )
    created = store.create_rollout(rollout, actor="ops")
    assert created.created_at > 0 and created.active
    with pytest.raises(Conflict, match="r1"):
        store.create_rollout(rollout, actor="ops")
    with pytest.raises(Conflict, match="already has rollout 'r1'"):
        store.create_rollout(RolloutRecord("r2", "bot", "bot@v3", "bot@v1", "running", {}), actor="ops")
    assert store.snapshot().active_rollout("bot") == store.get_rollout("r1")
    advanced = store.update_rollout(
        "r1",
        expect_revision=0,
        actor="evaluator",
        action="rollout.advance",
        numbers={"n": 40},
        step=1,
        weights={"bot@v1": 50, "bot@v2": 50},
    )
    assert advanced.revision == 1
    done = store.update_rollout(
        "r1", expect_revision=1, actor="evaluator", action="rollout.promote", set_stable="v2", state="promoted"
    )
    assert done.state == "promoted" and not done.active and done.revision == 2
    assert store.stable_versions()["bot"] == "v2"
    assert store.snapshot().active_rollout("bot") is None
    assert [a.action for a in store.audit_log("r1")] == ["rollout.start", "rollout.advance", "rollout.promote"]
    with pytest.raises(ValueError, match="adapter"):
        store.update_rollout("r1", expect_revision=2, actor="x", action="y", adapter="other")


def test_feedback_upsert_replaces_and_keeps_attribution(store: Store) -> None:
    store.write_requests([request("chatcmpl-1", rollout="r1"), request("chatcmpl-2")])
    assert store.get_request("chatcmpl-1").ttft_s == pytest.approx(0.01)
    assert set(store.get_requests(["chatcmpl-1", "nope"])) == {"chatcmpl-1"}
    store.put_feedback([FeedbackRecord("chatcmpl-1", 0.0, "alice", "bot", "bot@v1", "r1", label="thumbs_down")])
    store.put_feedback([FeedbackRecord("chatcmpl-1", 1.0, "alice", "bot", "bot@v1", "r1", comment="fixed")])
    rows = store.feedback(rollout="r1")
    assert len(rows) == 1 and rows[0].score == 1.0 and rows[0].label is None and rows[0].comment == "fixed"
    assert [r.id for r in store.requests(rollout="r1")] == ["chatcmpl-1"]


def test_lease_has_one_holder_until_it_expires_and_each_term_a_higher_token(store: Store) -> None:
    first = store.acquire_lease("evaluator", "a", ttl_s=0.5)
    assert first is not None and first.token == 1
    assert store.acquire_lease("evaluator", "b", ttl_s=10) is None
    renewed = store.acquire_lease("evaluator", "a", ttl_s=0.5)  # renew: same term, same token
    assert renewed is not None and renewed.token == 1 and renewed.expires_at >= first.expires_at
    assert store.lease_holder("evaluator") == "a"
    time.sleep(0.7)
    assert store.lease_holder("evaluator") is None
    taken = store.acquire_lease("evaluator", "b", ttl_s=10)  # taken over after expiry: a new term
    assert taken is not None and taken.token == 2
    store.release_lease("evaluator", "b")
    again = store.acquire_lease("evaluator", "a", ttl_s=10)
    assert again is not None and again.token == 3  # released rows keep counting


def test_body_retention_erases_only_old_bodies(store: Store) -> None:
    old, new = request("old"), request("new")
    old.created_at -= 3600
    for record in (old, new):
        record.request_body, record.response_text = {"messages": [{"role": "user", "content": "hi"}]}, "hello"
    store.write_requests([old, new])
    assert store.erase_bodies(time.time() - 60) == 1
    assert store.get_request("old").request_body is None and store.get_request("old").response_text is None
    assert store.get_request("new").response_text == "hello"


def test_unreachable_database_names_the_url_without_password() -> None:
    from serving.errors import StoreUnavailable
    from serving.store.connect import check_reachable

    engine = create_db_engine("postgresql://loraplane:hunter2@127.0.0.1:1/loraplane", connect_timeout_s=1)
    with pytest.raises(StoreUnavailable) as err:
        check_reachable(engine)
    assert "127.0.0.1:1/loraplane" in str(err.value) and "hunter2" not in str(err.value)
    assert "***" in str(err.value)
    _ = sa


def test_body_retention_erases_users_corrections_with_the_bodies(store: Store) -> None:
    store.write_requests([request("r1")])
    store.put_feedback([FeedbackRecord("r1", 0.0, "alice", "bot", "bot@v1", correction="the right answer")])
    assert store.corrections_of(["r1", "unknown"]) == {"r1": "the right answer"}
    assert store.erase_bodies(time.time() - 60) == 0  # given just now: kept
    assert store.get_feedback("r1").correction == "the right answer"
    assert store.erase_bodies(time.time() + 1) == 1  # past the retention: the user's words go, the score stays
    kept = store.get_feedback("r1")
    assert kept.correction is None and kept.score == 0.0 and store.corrections_of(["r1"]) == {}


def test_body_retention_touches_each_row_once_and_uncaptured_rows_never(store: Store) -> None:
    rows = [request(f"r{i}") for i in range(4)]
    for record in rows:
        record.created_at -= 3600
    rows[0].request_body, rows[0].response_text = {"messages": []}, "hello"  # the one captured row
    store.write_requests(rows)
    with store.engine.connect() as conn:  # uncaptured: SQL NULL, not JSON 'null' (which IS NOT NULL matches)
        nulls = conn.execute(sa.text("SELECT count(*) FROM request_log WHERE request_body IS NULL")).scalar()
    assert nulls == 3
    assert store.erase_bodies(time.time() - 60) == 1
    assert store.erase_bodies(time.time() - 60) == 0  # the next pass has nothing left to rewrite


def test_body_retention_works_in_bounded_batches(store: Store) -> None:
    rows = [request(f"b{i}") for i in range(7)]
    for record in rows:
        record.created_at -= 3600
        record.request_body, record.response_text = {"messages": []}, "hello"
    store.write_requests(rows)
    assert store.erase_bodies(time.time() - 60, batch_size=2, max_batches=2) == 4  # at most 2 x 2 per call
    assert store.erase_bodies(time.time() - 60, batch_size=2, max_batches=2) == 3  # the rest, next call
    assert store.erase_bodies(time.time() - 60, batch_size=2, max_batches=2) == 0
    assert all(store.get_request(f"b{i}").request_body is None for i in range(7))
