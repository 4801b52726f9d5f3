"""Retention and bounds of the request log on real SQLite and PostgreSQL: old rows go in bounded
batches but never an active rollout's; captured bodies over the byte cap are not kept, and counted."""

from __future__ import annotations

import time

import pytest

from serving.store import FeedbackRecord, RequestRecord, RolloutRecord, Store, StoreWriter


def row(rid: str, age_s: float, rollout: str | None = None) -> RequestRecord:
    return RequestRecord(rid, time.time() - age_s, "chat", "bot", "bot@v1", "k", 200, 0.1, rollout=rollout)


def test_old_rows_are_deleted_in_bounded_batches_except_an_active_rollouts(store: Store) -> None:
    day = 86_400.0
    store.create_rollout(RolloutRecord("live", "bot", "bot@v2", "bot@v1", "running", {}), actor="ops")
    store.create_rollout(RolloutRecord("done", "other", "other@v2", "other@v1", "rolled_back", {}), actor="ops")
    old = [row(f"old-{i}", 40 * day) for i in range(5)] + [row("old-done", 40 * day, "done")]
    store.write_requests([*old, row("old-live", 40 * day, "live"), row("new", 60.0)])
    store.put_feedback([FeedbackRecord("old-0", 1.0, "k", "bot", "bot@v1")])
    with store.engine.begin() as conn:  # feedback given long ago
        conn.exec_driver_sql("UPDATE feedback SET created_at = created_at - 3456000")
    cutoff = time.time() - 30 * day
    assert store.delete_old_requests(cutoff, batch_size=2, max_batches=1) == 2 + 1  # one batch per table
    assert store.delete_old_requests(cutoff, batch_size=2, max_batches=10) == 4
    left = {r.id for r in store.requests(limit=100)}
    assert left == {"old-live", "new"}  # the running rollout's rows stay whatever their age
    assert store.feedback() == []


def test_bodies_over_the_byte_cap_are_not_kept_and_are_counted(store: Store) -> None:
    skipped: list[int] = []
    writer = StoreWriter(
        store,
        queue_size=100,
        batch_size=10,
        flush_interval_s=0.05,
        body_retention_s=3600.0,
        body_max_bytes=1_000,
        on_body_skipped=skipped.append,
    )
    writer.start()
    small, big = row("small", 0), row("big", 0)
    small.request_body, small.response_text = {"messages": [{"role": "user", "content": "hi"}]}, "hello"
    big.request_body, big.response_text = {"messages": [{"role": "user", "content": "é" * 400}]}, "x" * 300
    writer.offer(small)
    writer.offer(big)
    writer.flush().result(10)
    writer.stop()
    assert store.get_request("small").response_text == "hello"  # type: ignore[union-attr]
    kept = store.get_request("big")
    assert kept is not None and kept.request_body is None and kept.response_text is None and kept.status == 200
    assert skipped == [1] and writer.bodies_skipped == 1


def test_step_moments_are_the_sums_over_the_unit_cells(store: Store) -> None:
    records = []
    for i in range(40):
        r = row(f"id-{i}", 0, "r")
        r.variant, r.unit, r.step = ("bot@v2" if i % 3 else "bot@v1"), f"{i % 7:032x}", i % 2
        r.outcome, r.ttft_s = ("error" if i % 5 == 0 else "ok"), 0.05 * (i % 4)
        records.append(r)
    store.write_requests(records)
    store.put_feedback(
        [
            FeedbackRecord(f"id-{i}", i / 40, "k", "bot", r.variant, "r", unit=r.unit, step=r.step)
            for i, r in enumerate(records)
            if i % 4 == 0
        ]
    )
    cells = store.rollout_units("r", ttft_threshold_s=0.07)
    moments = {(m.variant, m.step): m for m in store.rollout_moments("r", ttft_threshold_s=0.07)}
    assert set(moments) == {(c.variant, c.step) for c in cells}
    for (variant, step), m in moments.items():
        mine = [c for c in cells if (c.variant, c.step) == (variant, step)]
        assert m.units == len(mine) and m.rated_units == sum(c.score_n > 0 for c in mine)
        assert m.requests == sum(c.requests for c in mine) and m.requests_sq == sum(c.requests**2 for c in mine)
        assert m.errors_x_requests == sum(c.errors * c.requests for c in mine)
        assert m.ttft_over_sq == sum(c.ttft_over**2 for c in mine)
        assert m.score_sum_x_n == pytest.approx(sum(c.score_sum * c.score_n for c in mine))
        assert m.score_sum_sq == pytest.approx(sum(c.score_sum**2 for c in mine))
