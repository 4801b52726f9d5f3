"""The store's background writer: the request log and feedback, batched, off the event loop.

- `offer(record)` never blocks: the record goes into a bounded queue, or is dropped and counted
  (`on_drop`) when the queue is full. A batch that fails to write (database slow or down) is
  dropped and counted too, so serving never waits on the database.
- One bad record never drops its batch: when the database refuses a batch for its data (a value
  too long, a repeated id), the batch is written again in halves until the bad records stand
  alone; only they are dropped, counted by `on_reject` and named in the log.
- Captured bodies over `body_max_bytes` (request JSON + response text, UTF-8) are not kept: the
  record is written without them and `on_body_skipped` counts it.
- Retention, every ERASE_EVERY_S: captured bodies older than `body_retention_s` are erased, and
  request-log / feedback rows older than `request_log_retention_s` deleted in bounded batches
  (Store.delete_old_requests: rows of an active rollout stay until it ends).
- `offer_score(record)` never blocks either: a grader's score (FeedbackRecord, source "grader:NAME")
  is queued and upserted in batches after the request records queued before it; a full queue or
  a failed write drops it, counted by `on_score_drop`.
- `submit_feedback(job)` returns a Future the route awaits: the writer first writes every request
  record queued before it (so feedback for a response still in the queue works), then checks the
  job against the request log (unknown id -> NotFound, another key -> Forbidden) and upserts
  all the feedback it has in one transaction (group commit: ~2 round trips per batch).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import sqlalchemy as sa

from serving.errors import Forbidden, NotFound, StoreUnavailable
from serving.store.records import FeedbackRecord, RequestRecord
from serving.store.store import Store

log = logging.getLogger("loraplane.store")
ERASE_EVERY_S = 600.0  # how often captured bodies past their retention are erased


def _bad_data(exc: sa.exc.SQLAlchemyError) -> bool:
    """The database (or the driver adapting a value) refused a record's data: a value too long or
    invalid (DataError), a repeated id (IntegrityError), or a Python-side failure such as a body JSON
    cannot encode (a StatementError that is not a DBAPIError). Not: the database being down."""
    if isinstance(exc, (sa.exc.DataError, sa.exc.IntegrityError)):
        return not getattr(exc, "connection_invalidated", False)
    return isinstance(exc, sa.exc.StatementError) and not isinstance(exc, sa.exc.DBAPIError)


@dataclass(frozen=True)
class FeedbackJob:
    response_id: str
    score: float
    key_name: str  # who is rating
    is_admin: bool  # admin may rate any response
    label: str | None = None
    comment: str | None = None
    correction: str | None = None  # what the answer should have been (the user's words)


def exportable(request: RequestRecord) -> bool:
    """Whether a correction of this request can become training data: an answered request whose
    bodies were captured (adapters[].capture or a rollout's capture). Kept for nothing else: the
    user's words are not stored where no export could use them."""
    return request.status == 200 and request.request_body is not None and request.response_text is not None


class StoreWriter:
    def __init__(
        self,
        store: Store,
        *,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
        body_retention_s: float,
        request_log_retention_s: float | None = None,
        body_max_bytes: int | None = None,
        on_drop: Callable[[int], None] = lambda n: None,
        on_reject: Callable[[int], None] = lambda n: None,
        on_body_skipped: Callable[[int], None] = lambda n: None,
        on_score_drop: Callable[[int], None] = lambda n: None,
    ):
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.body_retention_s = body_retention_s
        self.request_log_retention_s = request_log_retention_s
        self.body_max_bytes = body_max_bytes
        self.on_drop = on_drop
        self.on_reject = on_reject
        self.on_body_skipped = on_body_skipped
        self.bodies_skipped = 0
        self._requests: queue.Queue[RequestRecord] = queue.Queue(maxsize=queue_size)
        self._feedback: queue.Queue[tuple[FeedbackJob | None, Future]] = queue.Queue(maxsize=queue_size)
        self._scores: queue.Queue[FeedbackRecord] = queue.Queue(maxsize=queue_size)
        self.on_score_drop = on_score_drop
        self._pending: dict[str, RequestRecord] = {}  # queued, not yet written (read by feedback)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loraplane-store-writer", daemon=True)
        self._erased_at = 0.0
        self.dropped = 0
        self.rejected = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (within timeout_s), then end the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    # --- called from the event loop (never blocks) ---------------------------------------------

    def offer(self, record: RequestRecord) -> bool:
        try:
            self._requests.put_nowait(record)
        except queue.Full:
            self._drop(1)
            return False
        self._pending[record.id] = record
        return True

    def offer_score(self, record: FeedbackRecord) -> bool:
        try:
            self._scores.put_nowait(record)
        except queue.Full:
            self.on_score_drop(1)
            return False
        return True

    def pending(self, response_id: str) -> RequestRecord | None:
        return self._pending.get(response_id)

    def submit_feedback(self, job: FeedbackJob) -> Future:
        future: Future = Future()
        try:
            self._feedback.put_nowait((job, future))
        except queue.Full:
            future.set_exception(StoreUnavailable("the feedback queue is full; retry shortly"))
        self._wake.set()
        return future

    def flush(self) -> Future:
        """A Future done when everything queued before this call was written (or dropped)."""
        future: Future = Future()
        self._feedback.put((None, future))
        self._wake.set()
        return future

    # --- the writer thread ---------------------------------------------------------------------

    def _drop(self, n: int) -> None:
        self.dropped += n
        self.on_drop(n)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                self._write_requests()
                self._write_scores()
                self._handle_feedback()
                self._retention()
            except Exception:  # the writer must outlive any one bad batch
                log.exception("store writer: unexpected error")
            if stopping and self._requests.empty() and self._feedback.empty() and self._scores.empty():
                return

    def _write_requests(self) -> None:
        while not self._requests.empty():
            batch: list[RequestRecord] = []
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._requests.get_nowait())
                except queue.Empty:
                    break
            self._bound_bodies(batch)
            try:
                self._write_batch(batch)
            except sa.exc.SQLAlchemyError as exc:
                log.warning("request log: %d records dropped, the database failed: %s", len(batch), exc)
                self._drop(len(batch))
            finally:
                for record in batch:
                    self._pending.pop(record.id, None)

    def _write_scores(self) -> None:
        while not self._scores.empty():
            batch: dict[tuple[str, str], FeedbackRecord] = {}  # a repeat in one batch: the last wins
            while len(batch) < self.batch_size:
                try:
                    record = self._scores.get_nowait()
                except queue.Empty:
                    break
                batch[record.response_id, record.source] = record
            try:
                self.store.put_feedback(list(batch.values()))
            except sa.exc.SQLAlchemyError as exc:
                log.warning("grader scores: %d dropped, the database failed: %s", len(batch), exc)
                self.on_score_drop(len(batch))

    def _bound_bodies(self, batch: list[RequestRecord]) -> None:
        """Drop captured bodies over body_max_bytes (the row is still logged), counting each."""
        if self.body_max_bytes is None:
            return
        for record in batch:
            if record.request_body is None and record.response_text is None:
                continue
            size = len(json.dumps(record.request_body, separators=(",", ":")).encode()) + len(
                (record.response_text or "").encode()
            )
            if size > self.body_max_bytes:
                record.request_body = record.response_text = None
                self.bodies_skipped += 1
                self.on_body_skipped(1)

    def _write_batch(self, batch: list[RequestRecord]) -> None:
        """Write `batch`; when the database refuses it for its data, write it in halves so that only
        the records it refuses are dropped. A database that is down raises (the batch is dropped)."""
        try:
            self.store.write_requests(batch)
        except sa.exc.SQLAlchemyError as exc:
            if not _bad_data(exc):
                raise
            if len(batch) == 1:
                self._reject(batch[0], exc)
                return
            half = len(batch) // 2
            self._write_batch(batch[:half])
            self._write_batch(batch[half:])

    def _reject(self, record: RequestRecord, exc: Exception) -> None:
        self.rejected += 1
        self.on_reject(1)
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        log.warning("request log: record %r refused by the database, dropped: %s", record.id[:64], reason)

    def _handle_feedback(self) -> None:
        jobs: list[tuple[FeedbackJob | None, Future]] = []
        while len(jobs) < self.batch_size:
            try:
                jobs.append(self._feedback.get_nowait())
            except queue.Empty:
                break
        if not jobs:
            return
        real = [(job, fut) for job, fut in jobs if job is not None]
        try:
            accepted = self._apply_feedback(real)
        except Exception as exc:  # any error: every caller gets an answer now, not after feedback_timeout_s
            if not isinstance(exc, sa.exc.SQLAlchemyError):
                log.exception("feedback batch of %d not saved", len(real))
            error = StoreUnavailable(f"feedback was not saved: the database failed ({type(exc).__name__}); retry")
            for _, future in real:
                future.set_exception(error)
        else:
            for future, result in accepted:
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        for job, future in jobs:
            if job is None:
                future.set_result(None)
        if not self._feedback.empty():
            self._wake.set()

    def _apply_feedback(self, jobs: list[tuple[FeedbackJob, Future]]) -> list[tuple[Future, object]]:
        found = self.store.get_requests(sorted({job.response_id for job, _ in jobs}))
        results: list[tuple[Future, object]] = []
        records: dict[str, FeedbackRecord] = {}  # the last of repeats in one batch wins
        for job, future in jobs:
            request = found.get(job.response_id)
            if request is None:
                results.append((future, NotFound(f"no response with id {job.response_id!r} was logged", param="id")))
                continue
            if not job.is_admin and job.key_name != request.key_name:
                results.append(
                    (
                        future,
                        Forbidden(
                            f"response {job.response_id!r} was made by another key; only that key or admin may rate it",
                            param="id",
                        ),
                    )
                )
                continue
            record = FeedbackRecord(
                job.response_id,
                job.score,
                job.key_name,
                request.model,
                request.variant,
                request.rollout,
                job.label,
                job.comment,
                unit=request.unit,
                step=request.step,
                excluded=request.excluded,
                correction=job.correction if exportable(request) else None,
            )
            records[job.response_id] = record
            results.append((future, record))
        self.store.put_feedback(list(records.values()))
        return results

    def _retention(self) -> None:
        now = time.time()
        if now - self._erased_at < ERASE_EVERY_S:
            return
        self._erased_at = now
        try:
            self.store.erase_bodies(now - self.body_retention_s)
            if self.request_log_retention_s is not None:
                deleted = self.store.delete_old_requests(now - self.request_log_retention_s)
                if deleted:
                    log.info(
                        "request-log retention: %d rows older than %.0f s deleted",
                        deleted,
                        self.request_log_retention_s,
                    )
        except sa.exc.SQLAlchemyError as exc:
            log.warning("retention: erase/delete failed, will retry: %s", exc)
