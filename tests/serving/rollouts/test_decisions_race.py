"""One decision at a time, on real PostgreSQL: every rollout or stable-pointer change is a
compare-and-set on the rollout's revision, the evaluator's writes are fenced by its lease's token,
lease times are the database's clock. Each test replays a race from issue 20 point 4 with the real
Evaluator and Store; a fault (a slow read, an admin action in the middle) is injected by wrapping
the store's own read methods."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from serving.config import RolloutsConfig
from serving.errors import Conflict
from serving.metrics import GatewayMetrics
from serving.rollouts.actions import manual_action, new_rollout
from serving.rollouts.evaluator import LEASE, Evaluator
from serving.rollouts.policy import GuardSpec
from serving.store import REVISION_CHANGED, RequestRecord, Store
from serving.store.connect import create_db_engine, migrate
from tests.serving.conftest import new_postgres_database

LEASE_S = 1.0


class SlowStore(Store):
    """The real store; the first statistics read of an evaluation runs `during` first (a fault)."""

    during: Callable[[], None] | None = None

    def _hook(self) -> None:
        during, self.during = self.during, None
        if during is not None:
            during()

    def requests(self, **kw: Any) -> list[RequestRecord]:
        self._hook()
        return super().requests(**kw)

    def rollout_units(self, rollout: str, **kw: Any) -> Any:
        self._hook()
        return super().rollout_units(rollout, **kw)


@pytest.fixture
def pg_url(postgres_server_url: str) -> str:
    url = new_postgres_database(postgres_server_url)
    migrate(create_db_engine(url))
    return url


@pytest.fixture
def stores(pg_url: str) -> Iterator[list[SlowStore]]:
    """Two replicas' stores on one database."""
    out = [SlowStore(create_db_engine(pg_url)) for _ in range(2)]
    yield out
    for s in out:
        s.close()


def start_promotable(store: Store) -> None:
    """Rollout "r" of bot@v2 at its last step before 100 with enough clean requests to promote."""
    cfg = RolloutsConfig(lease_s=LEASE_S)
    spec = cfg.spec(
        steps=(50, 100), min_samples=20, promote_when="no_regression", guards=(GuardSpec("error_rate", 0.05),)
    )
    store.ensure_stable("bot", "v1")
    store.create_rollout(new_rollout("r", "bot@v2", "bot@v1", spec, "none", time.time()), actor="admin")
    now = time.time() + 0.01
    records = [
        RequestRecord(f"id-{variant}-{i}", now, "chat", "bot", variant, "k", 200, 0.01, rollout="r", ttft_s=0.01)
        for variant in ("bot@v1", "bot@v2")
        for i in range(60)
    ]
    for i, record in enumerate(records):
        record.unit, record.step = f"{i % 30:032x}", 0
    store.write_requests(records)


def evaluator(store: Store, holder: str) -> Evaluator:
    return Evaluator(store, RolloutsConfig(lease_s=LEASE_S, tick_s=0.1), GatewayMetrics(), holder=holder)


def actions(store: Store, *kinds: str) -> list[tuple[str, str]]:
    return [(a.actor, a.action) for a in store.audit_log("r") if a.action.split(".")[-1] in kinds]


def test_an_admin_rollback_during_an_evaluation_is_not_overwritten_by_a_promotion(stores: list[SlowStore]) -> None:
    store, admin = stores
    start_promotable(store)
    store.during = lambda: manual_action(admin, "r", "rollback", "admin", "bad answers")
    decisions = evaluator(store, "A").tick()
    after = store.get_rollout("r")
    assert decisions == []  # the promotion was refused: the rollout changed under the evaluation
    assert after is not None and after.state == "rolled_back" and after.weights == {"bot@v2": 0, "bot@v1": 100}
    assert store.stable_versions() == {"bot": "v1"}
    assert actions(store, "rollback", "promote") == [("admin", "rollout.rollback")]


def test_an_evaluation_outlasting_its_lease_cannot_promote_after_another_replica_did(stores: list[SlowStore]) -> None:
    a_store, b_store = stores
    start_promotable(a_store)
    b = evaluator(b_store, "B")
    # A's evaluation stalls past its lease; meanwhile B takes the lapsed lease and promotes.
    a_store.during = lambda: (time.sleep(LEASE_S + 0.3), b.tick())
    a_decisions = evaluator(a_store, "A").tick()
    assert a_decisions == [] and b.leader
    assert actions(a_store, "promote") == [("evaluator:B", "rollout.promote")]
    assert [a.action for a in a_store.audit_log("bot")] == ["stable.init", "stable.set"]


def test_a_lapsed_lease_fences_the_decision_even_when_nobody_else_wrote(stores: list[SlowStore]) -> None:
    a_store, b_store = stores
    start_promotable(a_store)
    # B only takes the lease (no evaluation, so the rollout's revision does not move): the fence alone refuses A.
    a_store.during = lambda: (time.sleep(LEASE_S + 0.3), b_store.acquire_lease(LEASE, "B", 30))
    assert evaluator(a_store, "A").tick() == []
    rollout = a_store.get_rollout("r")
    assert rollout is not None and rollout.state == "running" and rollout.revision == 0
    assert actions(a_store, "promote", "hold", "advance") == []


def test_a_replica_whose_clock_runs_15_s_ahead_cannot_take_a_held_lease(stores: list[SlowStore]) -> None:
    honest, skewed = stores
    skewed.clock = lambda: time.time() + 15.0
    held = honest.acquire_lease(LEASE, "A", ttl_s=10)
    assert held is not None
    assert skewed.acquire_lease(LEASE, "B", ttl_s=10) is None
    assert skewed.lease_holder(LEASE) == "A"
    renewed = honest.acquire_lease(LEASE, "A", ttl_s=10)
    assert renewed is not None and renewed.token == held.token  # A's term goes on undisturbed


def test_concurrent_writes_on_one_revision_exactly_one_wins(pg_url: str) -> None:
    store = Store(create_db_engine(pg_url))
    start_promotable(store)
    results: list[str] = []
    barrier = threading.Barrier(6)

    def write(i: int) -> None:
        barrier.wait()
        try:
            store.update_rollout("r", expect_revision=0, actor=f"w{i}", action="rollout.hold", evaluated_at=float(i))
            results.append("ok")
        except Conflict as exc:
            results.append(exc.code or "")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + [REVISION_CHANGED] * 5
    assert store.get_rollout("r").revision == 1  # type: ignore[union-attr]
    store.close()


def test_adapters_promote_during_a_rollout_is_409_naming_it(pg_url: str) -> None:
    store = Store(create_db_engine(pg_url))
    start_promotable(store)
    with pytest.raises(Conflict, match="rollout 'r'") as err:
        store.set_stable("bot", "v2", actor="admin")
    assert err.value.status == 409
    assert store.stable_versions() == {"bot": "v1"}
    store.close()


def test_rollback_after_promotion_restores_the_control_as_stable(pg_url: str) -> None:
    store = Store(create_db_engine(pg_url))
    start_promotable(store)
    assert manual_action(store, "r", "promote", "admin", None).state == "promoted"
    assert store.stable_versions() == {"bot": "v2"}
    back = manual_action(store, "r", "rollback", "admin", "v2 regressed after promotion")
    assert back.state == "rolled_back" and back.weights == {"bot@v2": 0, "bot@v1": 100}
    assert store.stable_versions() == {"bot": "v1"}
    moves = [a.numbers for a in store.audit_log("bot") if a.action == "stable.set"]
    assert [(m["from"], m["to"]) for m in moves] == [("v1", "v2"), ("v2", "v1")]  # type: ignore[index]
    with pytest.raises(Conflict, match="cannot rollback a rollout that is rolled_back"):
        manual_action(store, "r", "rollback", "admin", None)
    store.close()


def test_rollback_after_promotion_is_refused_once_the_pointer_moved_on(pg_url: str) -> None:
    store = Store(create_db_engine(pg_url))
    start_promotable(store)
    manual_action(store, "r", "promote", "admin", None)
    store.set_stable("bot", "v3", actor="admin")  # a person moved on since
    with pytest.raises(Conflict, match="stable version is 'v3', not 'v2'"):
        manual_action(store, "r", "rollback", "admin", None)
    assert store.get_rollout("r").state == "promoted"  # type: ignore[union-attr]
    assert store.stable_versions() == {"bot": "v3"}
    store.close()


def start_newer(store: Store, **config: object) -> None:
    """Rollout "newer" (other@v2) whose stored config has `config` written over it: settings a newer
    replica wrote that this code cannot read."""
    from dataclasses import replace as dc_replace

    guards = (GuardSpec("error_rate", 0.05),)
    spec = RolloutsConfig().spec(steps=(50, 100), promote_when="no_regression", guards=guards)
    store.ensure_stable("other", "v1")
    record = new_rollout("newer", "other@v2", "other@v1", spec, "none", time.time())
    store.create_rollout(dc_replace(record, config={**record.config, **config}), actor="admin")


def test_a_rollout_that_cannot_be_evaluated_pauses_alone(pg_url: str) -> None:
    """A rollout whose settings this replica cannot read (written by a newer replica in a rolling
    upgrade) is reported paused with the error; the other rollouts are still decided."""
    store = Store(create_db_engine(pg_url))
    try:
        start_promotable(store)
        start_newer(store, promote_when="faster_than_light")
        ev = evaluator(store, "A")
        decisions = dict(ev.tick())
        assert decisions["r"].outcome == "promote" and "newer" not in decisions
        assert ev.paused_reason is None  # the database is fine: nothing else paused
        state, reason = ev.effective_state(store.get_rollout("newer"))
        assert state == "paused" and "faster_than_light" in (reason or "") and "this rollout" in (reason or "")
        assert ev.effective_state(store.get_rollout("r"))[0] == "promoted"
        sample = ev.metrics.registry.get_sample_value
        assert sample("loraplane_rollout_decisions_total", {"rollout": "newer", "outcome": "error"}) == 1.0
        ev.tick()  # tried again next tick, counted once while the error is the same
        assert sample("loraplane_rollout_decisions_total", {"rollout": "newer", "outcome": "error"}) == 1.0
    finally:
        store.close()


def test_an_unreadable_interval_pauses_that_rollout_alone_and_a_lost_lease_forgets_it(pg_url: str) -> None:
    """interval_s is read by the tick itself (is the rollout due?): one this code cannot read paused
    every rollout as "database unreachable" before. A replica that is no longer the leader stops
    reporting its old evaluation errors (the new leader evaluates, and reports, that rollout)."""
    store = Store(create_db_engine(pg_url))
    try:
        start_promotable(store)
        start_newer(store, interval_s="PT30S")
        with store.engine.begin() as conn:  # evaluated before (by the newer replica that wrote it)
            conn.execute(sa.text("UPDATE rollouts SET evaluated_at = :t WHERE name = 'newer'"), {"t": time.time() - 60})
        ev = evaluator(store, "A")
        decisions = dict(ev.tick())
        assert ev.paused_reason is None and decisions["r"].outcome == "promote"
        state, reason = ev.effective_state(store.get_rollout("newer"))
        assert state == "paused" and "PT30S" not in (ev.paused_reason or "") and "this rollout" in (reason or "")
        store.release_lease(LEASE, "A")
        other = evaluator(store, "B")
        other.tick()  # B leads now
        ev.tick()  # A is not the leader: it neither evaluates nor reports an old error
        assert not ev.leader and ev.effective_state(store.get_rollout("newer"))[0] == "running"
    finally:
        store.close()
