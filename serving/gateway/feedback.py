"""POST /v1/feedback: a score for one response, by the key that made the request (or admin).

    {"id": "<response id>", "score": 0..1, "label": "...", "comment": "...", "correction": "..."}   (👍/👎 = 1/0)

`correction` (optional, at most MAX_CORRECTION_CHARS): what the answer should have been, in the
user's words. A thumbs-down says what is wrong; a correction says what is right, so the training
exports turn it into a preference pair (correction over the answer), a desirable KTO row and an SFT
row (serving/rollouts/export.py). Erased with the captured bodies (store.body_retention_s); kept
only for an answered request whose bodies were captured (else the reply says `"corrected": false`:
no export could use it).

Unknown id -> 404, score out of range -> 400, another key's response -> 403, a repeat replaces
the earlier score. Like a completion, a call takes a token from its key's rate limit (a bucket of
its own, `rate_limit_per_minute` per minute: 429 past it) and a place among
`gateway.max_in_flight` (429 when full); the admin key is not rate-limited. The write goes through
the store writer (batched, after any request record still queued), and the answer comes once it is
committed.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Request

from serving.errors import BadRequest, ServingError
from serving.gateway.auth import KeyStore, Principal
from serving.gateway.deps import AdmissionDep, ConfigDep, ControlDep, KeysDep, LimiterDep
from serving.gateway.limits import read_body
from serving.store import FeedbackJob

router = APIRouter()
MAX_ID_CHARS = 128
MAX_LABEL_CHARS = 64
MAX_COMMENT_CHARS = 4000
MAX_CORRECTION_CHARS = 16_000


def _optional_text(body: dict, field: str, limit: int) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"`{field}` must be a string of at most {limit} characters, got {value!r:.80}", param=field)
    if "\x00" in value or not _encodable(value):  # the database would refuse the whole feedback batch
        raise BadRequest(
            f"`{field}` must be text without NUL characters or unpaired surrogates, got {value!r:.80}", param=field
        )
    return value


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_feedback(body: dict) -> tuple[str, float, str | None, str | None, str | None]:
    response_id = body.get("id")
    if not isinstance(response_id, str) or not 0 < len(response_id) <= MAX_ID_CHARS:
        raise BadRequest("`id` is required: the `id` of a response this gateway returned", param="id")
    score = body.get("score")
    if (
        isinstance(score, bool)
        or not isinstance(score, (int, float))
        or not math.isfinite(score)
        or not 0 <= score <= 1
    ):
        raise BadRequest(f"`score` must be a number in 0..1 (👍 = 1, 👎 = 0), got {score!r}", param="score")
    return (
        response_id,
        float(score),
        _optional_text(body, "label", MAX_LABEL_CHARS),
        _optional_text(body, "comment", MAX_COMMENT_CHARS),
        _correction(body),
    )


def _correction(body: dict) -> str | None:
    value = _optional_text(body, "correction", MAX_CORRECTION_CHARS)
    if value is not None and not value.strip():
        raise BadRequest("`correction` is empty: give the answer the response should have been, or leave it out",
                         param="correction")  # fmt: skip
    return value


def _caller(keys: KeyStore, request: Request) -> tuple[Principal | None, bool]:
    """(the key's principal or None for the admin key, whether the caller is admin)."""
    authorization = request.headers.get("authorization")
    try:
        keys.check_admin(authorization)
    except ServingError:
        return keys.authenticate(authorization), False
    if not keys.cfg.enabled:  # auth off: everyone is "anonymous" and may rate anything
        return keys.authenticate(authorization), True
    return None, True


@router.post("/v1/feedback")
async def feedback(
    request: Request, cfg: ConfigDep, keys: KeysDep, limiter: LimiterDep, admission: AdmissionDep, control: ControlDep
) -> dict:
    principal, is_admin = _caller(keys, request)
    if principal is not None:  # the admin key is not rate-limited
        await limiter.take(principal, "feedback")
    lease = admission.admit()  # counts toward gateway.max_in_flight like a completion
    try:
        body = await read_body(request, cfg.gateway.max_body_bytes)
        response_id, score, label, comment, correction = parse_feedback(body)
        rater = principal.name if principal else "admin"
        job = FeedbackJob(response_id, score, rater, is_admin, label, comment, correction)
        record = await control.feedback(job)
    finally:
        lease.release()
    return {
        "object": "feedback",
        "id": record.response_id,
        "score": record.score,
        "model": record.model,
        "variant": record.variant,
        "corrected": record.correction is not None,
    }
