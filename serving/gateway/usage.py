"""GET /admin/usage: tokens in and out per key, model and UTC day (the admin key; docs/usage.md).

    GET /admin/usage?key=app&model=bot&since=2026-12-01&until=2026-12-07
    -> {"data": [{"day", "key", "model", "requests", "prompt_tokens", "completion_tokens", "total_tokens"}],
        "since", "until"}

`since` and `until` are UTC days, both inclusive: YYYY-MM-DD, or POSIX seconds (the day holding
that instant). The numbers come from the store's daily usage table (serving/store/usage.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re

from fastapi import APIRouter, Depends

from serving.errors import BadRequest
from serving.gateway.admin import require_admin
from serving.gateway.deps import StoreDep
from serving.store.usage import utc_day

usage = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])
DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SECONDS_RE = re.compile(r"^\d{1,12}(\.\d*)?$")


def parse_day(value: str | None, param: str) -> str | None:
    """A YYYY-MM-DD day or POSIX seconds -> YYYY-MM-DD (UTC); BadRequest naming the value otherwise."""
    if value is None or value == "":
        return None
    text = value.strip()
    if SECONDS_RE.match(text):
        return utc_day(float(text))
    if DAY_RE.match(text):
        try:
            dt.date.fromisoformat(text)
        except ValueError:
            pass
        else:
            return text
    raise BadRequest(
        f"`{param}` {value[:64]!r} is not a day: give YYYY-MM-DD (UTC) or POSIX seconds, e.g. {param}=2026-12-01",
        param=param,
    )


@usage.get("/usage")
async def get_usage(
    store: StoreDep,
    key: str | None = None,
    model: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> dict:
    """Tokens in and out per key, model and UTC day; since/until inclusive, YYYY-MM-DD or POSIX seconds."""
    first, last = parse_day(since, "since"), parse_day(until, "until")
    if first is not None and last is not None and first > last:
        raise BadRequest(f"`since` ({first}) is after `until` ({last}): swap them", param="since")
    rows = await asyncio.to_thread(store.usage, key=key or None, model=model or None, since=first, until=last)
    data = [
        {
            "day": u.day,
            "key": u.key_name,
            "model": u.model,
            "requests": u.requests,
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens,
        }
        for u in rows
    ]
    return {"data": data, "since": first, "until": last}
