"""Training data out of the gateway (admin key): an adapter's captured, rated traffic outside
rollouts, one page at a time; `loraplane feedback export` reads every page and writes the files
(serving/rollouts/export.py).

GET /admin/feedback/export?adapter=NAME[&version=vN][&since=T][&until=T][&label_source=user|grader:NAME]
                          [&after=CURSOR][&limit=N]
    -> {"adapter", "version", "label_source", "data": [capture...], "opted_out": n, "next": CURSOR | null}

A capture is {"id", "created_at", "variant", "status", "request", "response", "score", "correction"}:
answered (200) requests of the adapter with captured bodies (the adapter's `capture: bodies` setting,
config `adapters`), outside rollouts and experiments, in [since, until) (POSIX seconds), each with the
score its label source gave it (None when unrated) and the user's correction (POST /v1/feedback
`correction`; None when none, whatever the label source). Requests made by keys with `train_opt_out: true`
are never returned, only counted (`opted_out`). A page reads at most `limit` (<= 1000) rows of the
request log, keyset-paged by (created_at, id): pass `next` back as `after` until it is null.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from serving.config import ServingConfig
from serving.errors import BadRequest
from serving.gateway.admin import require_admin
from serving.gateway.deps import ConfigDep, StoreDep
from serving.registry import ADAPTER_NAME_RE, VERSION_RE
from serving.store import RequestRecord
from serving.store.records import USER_SOURCE
from serving.store.scores import MAX_PAGE

exports = APIRouter(prefix="/admin/feedback", dependencies=[Depends(require_admin)])


def opted_out_keys(cfg: ServingConfig) -> set[str]:
    """Names of the keys whose requests never become training data (auth.keys[].train_opt_out)."""
    return {k.name for k in cfg.auth.keys if k.train_opt_out}


def check_label_source(cfg: ServingConfig, value: str) -> str:
    sources = [USER_SOURCE, *(f"grader:{g.name}" for g in cfg.graders)]
    if value not in sources:
        raise BadRequest(f"label_source {value!r} is not one of {', '.join(sources)}", param="label_source")
    return value


def captures(
    records: list[RequestRecord], scores: dict[str, float], opt_out: set[str], corrections: dict[str, str]
) -> tuple[list[dict], int]:
    """(captures with their scores and corrections, how many were left out for opted-out keys)."""
    data, skipped = [], 0
    for r in records:
        if r.request_body is None or r.response_text is None:
            continue
        if r.key_name in opt_out:
            skipped += 1
            continue
        data.append(
            {
                "id": r.id,
                "created_at": r.created_at,
                "variant": r.variant,
                "status": r.status,
                "request": r.request_body,
                "response": r.response_text,
                "score": scores.get(r.id),
                "correction": corrections.get(r.id),
            }
        )
    return data, skipped


def _cursor(value: str | None) -> tuple[float, str] | None:
    if value is None:
        return None
    at, sep, rid = value.partition("|")
    try:
        return float(at), rid
    except ValueError:
        raise BadRequest(f"`after` {value!r} is not a cursor this route returned (`next`)", param="after") from None


@exports.get("/export")
async def feedback_export(
    cfg: ConfigDep,
    store: StoreDep,
    adapter: str,
    version: str | None = None,
    since: float | None = None,
    until: float | None = None,
    label_source: str = USER_SOURCE,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
) -> dict:
    """One page of an adapter's captured, rated traffic outside rollouts (`loraplane feedback export`)."""
    if not ADAPTER_NAME_RE.match(adapter):
        raise BadRequest(f"adapter {adapter!r} must match {ADAPTER_NAME_RE.pattern}", param="adapter")
    if version is not None and not VERSION_RE.match(version):
        raise BadRequest(f"version {version!r} must look like v3", param="version")
    source = check_label_source(cfg, label_source)
    page = await asyncio.to_thread(
        store.captured_page, adapter, version=version, since=since, until=until, after=_cursor(after), limit=limit
    )
    ids = [r.id for r in page]
    scores = await asyncio.to_thread(store.scores_of, ids, source)
    corrections = await asyncio.to_thread(store.corrections_of, ids)
    data, skipped = captures(page, scores, opted_out_keys(cfg), corrections)
    last = page[-1] if len(page) == limit else None
    return {
        "adapter": adapter,
        "version": version,
        "label_source": source,
        "data": data,
        "opted_out": skipped,
        "next": f"{last.created_at!r}|{last.id}" if last is not None else None,
    }
