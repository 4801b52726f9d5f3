"""The control-plane store: experiments, rollouts, stable versions, request log, feedback, audit log,
leases. SQLAlchemy 2 + Alembic (migrations in serving/store/migrations/, run programmatically).

Which database: env LORAPLANE_STORE_URL, else `store.url`, else the SQLite file `loraplane.db`
in `registry.adapters_dir` (one gateway). PostgreSQL by URL (psycopg 3) for several replicas.

    store = Store.open(cfg)            # connects (StoreUnavailable names the URL, no password), migrates
    snap = store.snapshot()            # ControlSnapshot: version, experiments, stable, rollouts
    store.version()                    # the change counter replicas poll (store.poll_interval_s)

Writes (each one transaction; control changes bump the version and write an audit record):
    store.put_experiment(name, variants, actor=..., capture="none"|"bodies", reason=...)
    store.delete_experiment(name, actor=...)          # NotFound
    store.ensure_stable(name, version)                # first published version becomes stable
    store.set_stable(name, version, actor=..., reason=..., numbers={...})  # -> previous version;
        # Conflict naming the rollout while the adapter has an active one
    store.create_rollout(RolloutRecord(...), actor=...)  # Conflict: name taken / adapter busy
    store.update_rollout(name, expect_revision=rollout.revision, actor=..., action="rollout.advance",
                         reason=..., numbers={...}, set_stable="v2"?, stable_from=?, fence=lease?,
                         state=..., step=..., weights=..., config=..., evaluated_at=...)
        # compare-and-set: Conflict(code=REVISION_CHANGED / LEASE_LOST) writes nothing; callers go
        # through serving/rollouts/actions.py apply(), the one transition function
    store.get_rollout(name) / list_rollouts()
    store.audit(actor=..., action=..., subject=..., reason=..., numbers=...) / audit_log(subject)
    store.acquire_lease("evaluator", holder, ttl_s) -> Lease | None (database clock; fencing token)
    store.release_lease / lease_holder
Reads for statistics: store.rollout_units(rollout, ttft_threshold_s=...) -> UnitTable (a GROUP BY
    on a covering index, never body columns; per (variant, step, unit) as numpy columns, read from
    PostgreSQL as a few rows of binary arrays: serving/store/unit_table.py);
    store.rollout_moments(...) -> [StepMoments], the same cells summed per (variant, step) in SQL
    (sums, squares, cross products): a few rows at any number of users. store.requests /
    store.feedback return whole rows (bodies included) for exports and captures only.
Usage (serving/store/usage.py): the writer upserts usage_daily (tokens in/out and requests per key,
    model, UTC day) in each request-log batch's transaction; store.usage(key=, model=, since=, until=)
    -> [UsageRecord]; store.key_tokens_on(key, day) -> {model: tokens}. Retention never deletes it.
Scores have a source: "user" (POST /v1/feedback) or "grader:NAME" (serving/graders/), one per
    response and source. rollout_units counts users' only; store.rollout_scores(rollout, source)
    gives one grader's per-unit cells; store.captured_page / scores_of page an adapter's captured
    traffic for `loraplane feedback export` (serving/store/scores.py).
Retention: store.erase_bodies(older_than), store.delete_old_requests(older_than) (bounded batches;
    rows of active rollouts are kept), both run by the writer.

A rollout (RolloutRecord) splits traffic of the adapter name `adapter` by `weights`
("adapter@vN" -> weight) while its state is "running" or "paused" (records.ACTIVE_ROLLOUT_STATES);
`config` is free JSON (steps, guards, alpha, min_samples, interval_s, capture: "bodies").

The Store is synchronous: on the event loop call it via `await asyncio.to_thread(...)`. The
request log and feedback go through StoreWriter (serving/store/writer.py): a background thread
with a bounded queue that batches writes; dropped records are counted, serving never waits.
"""

from serving.store.connect import migrate, safe_url, store_url
from serving.store.records import (
    ACTIVE_ROLLOUT_STATES,
    CAPTURE_MODES,
    ROLLOUT_STATES,
    AuditRecord,
    ControlSnapshot,
    ExperimentRecord,
    FeedbackRecord,
    Lease,
    RequestRecord,
    RolloutRecord,
    StepMoments,
    UnitStats,
    UsageRecord,
)
from serving.store.store import LEASE_LOST, REVISION_CHANGED, Store
from serving.store.unit_table import UnitTable
from serving.store.writer import FeedbackJob, StoreWriter

__all__ = [
    "ACTIVE_ROLLOUT_STATES",
    "CAPTURE_MODES",
    "ROLLOUT_STATES",
    "AuditRecord",
    "ControlSnapshot",
    "ExperimentRecord",
    "FeedbackJob",
    "FeedbackRecord",
    "LEASE_LOST",
    "Lease",
    "REVISION_CHANGED",
    "RequestRecord",
    "RolloutRecord",
    "Store",
    "StepMoments",
    "StoreWriter",
    "UnitStats",
    "UnitTable",
    "UsageRecord",
    "migrate",
    "safe_url",
    "store_url",
]
