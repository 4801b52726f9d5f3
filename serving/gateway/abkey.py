"""The A/B key of a request: what `assign_variant` hashes to choose an experiment's variant.

Sources, tried in the order of `gateway.ab_key_sources` (default user, header, api_key):
- "user": the body's `user` field (OpenAI's end-user id);
- "header": the X-User-Id header;
- "api_key": the caller's API key (its sha256; one key = one variant).
Never the client address: behind a load balancer every request has the same one.

A request to an experiment with none of them gets a random key of its own: the experiment's
split holds over such requests, but the same client may see different variants. Each is counted
in loraplane_unkeyed_requests_total{route}, so a client that forgets `user` shows on the dashboard.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from fastapi import Request

from serving.gateway.auth import Principal
from serving.store.records import UNIT_LEN


def request_key(request: Request, body: dict, principal: Principal, sources: Sequence[str]) -> str | None:
    for source in sources:
        if source == "user":
            user = body.get("user")
            if isinstance(user, str) and user:
                return f"user:{user}"
        elif source == "header":
            if header := request.headers.get("x-user-id"):
                return f"user:{header}"
        elif source == "api_key" and principal.key_hash:
            return f"key:{principal.key_hash}"
    return None


def random_key() -> str:
    return f"unkeyed:{secrets.token_hex(8)}"


def unit_of(key: str) -> str:
    """The unit of assignment the request log records: a fixed-length digest of the A/B key (the
    variant is sticky per key, so rollout statistics treat each key as one unit). Never the key
    itself: user ids stay out of the log."""
    return hashlib.sha256(key.encode()).hexdigest()[:UNIT_LEN]
