"""The store writer on real SQLite: bounded queue (drops counted, never blocks), feedback for a
record still queued, unknown ids and other keys refused, a failing database counted as drops."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from serving.errors import Forbidden, NotFound, StoreUnavailable
from serving.store import FeedbackJob, RequestRecord, Store, StoreWriter
from serving.store.connect import create_db_engine, migrate


@pytest.fixture
def store(tmp_path: Path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'loraplane.db'}")
    migrate(engine)
    s = Store(engine)
    yield s
    s.close()


def record(rid: str, key: str = "alice") -> RequestRecord:
    return RequestRecord(rid, time.time(), "chat", "bot", "bot@v1", key, 200, 0.01)


def writer(store: Store, drops: list[int], **kw) -> StoreWriter:
    settings = {"queue_size": 100, "batch_size": 10, "flush_interval_s": 60.0, "body_retention_s": 3600.0, **kw}
    return StoreWriter(store, on_drop=drops.append, **settings)


def test_full_queue_drops_and_counts_without_blocking(store: Store) -> None:
    drops: list[int] = []
    w = writer(store, drops, queue_size=5)  # not started: nothing drains the queue
    started = time.perf_counter()
    accepted = [w.offer(record(f"r{i}")) for i in range(8)]
    assert time.perf_counter() - started < 0.1
    assert accepted == [True] * 5 + [False] * 3 and sum(drops) == 3 == w.dropped
    w.start()
    w.flush().result(5)
    assert len(store.requests()) == 5
    w.stop()


def test_feedback_finds_a_record_still_in_the_queue(store: Store) -> None:
    drops: list[int] = []
    w = writer(store, drops)  # flush interval 60 s: only the feedback wakes the writer
    w.start()
    w.offer(record("queued"))
    assert w.pending("queued") is not None and store.get_request("queued") is None
    saved = w.submit_feedback(FeedbackJob("queued", 1.0, "alice", False)).result(5)
    assert saved.variant == "bot@v1" and store.get_feedback("queued").score == 1.0
    with pytest.raises(NotFound, match="nope"):
        w.submit_feedback(FeedbackJob("nope", 1.0, "alice", False)).result(5)
    with pytest.raises(Forbidden, match="another key"):
        w.submit_feedback(FeedbackJob("queued", 0.0, "mallory", False)).result(5)
    w.submit_feedback(FeedbackJob("queued", 0.0, "ops", True)).result(5)  # admin may
    assert store.get_feedback("queued").score == 0.0
    w.stop()
    assert drops == []


def test_a_failing_database_is_counted_not_raised(store: Store) -> None:
    drops: list[int] = []
    w = writer(store, drops, flush_interval_s=0.01)
    store.engine.dispose()
    store.engine = create_db_engine("postgresql://nobody:pw@127.0.0.1:1/none", connect_timeout_s=1)
    w.start()
    for i in range(3):
        w.offer(record(f"r{i}"))
    w.flush().result(10)
    assert sum(drops) == 3
    with pytest.raises(StoreUnavailable, match="database failed"):
        w.submit_feedback(FeedbackJob("r0", 1.0, "alice", False)).result(10)
    w.stop()


def test_a_feedback_batch_the_driver_cannot_send_is_answered_at_once(store: Store) -> None:
    """A text the driver cannot encode (an unpaired surrogate: UnicodeEncodeError, not a database
    error) fails its batch at once; before, the futures were never resolved and every caller in the
    batch waited out feedback_timeout_s."""
    w = writer(store, [])
    w.start()
    w.offer(record("r0"))
    w.flush().result(5)
    with pytest.raises(StoreUnavailable, match="UnicodeEncodeError"):
        w.submit_feedback(FeedbackJob("r0", 0.0, "alice", False, comment="a \ud800 b")).result(5)
    assert store.get_feedback("r0") is None
    w.submit_feedback(FeedbackJob("r0", 0.0, "alice", False, comment="fine")).result(5)  # the writer goes on
    assert store.get_feedback("r0").comment == "fine"
    w.stop()
