"""API keys (stored as sha256), per-key model allow-lists, admin key, per-key rate limits."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from dataclasses import dataclass
from typing import Literal

from serving.config import AuthConfig, KeyConfig
from serving.errors import Forbidden, RateLimited, Unauthorized


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str  # key name from config ("anonymous" when auth is off)
    key_hash: str | None
    models: tuple[str, ...]
    rate_limit_per_minute: int
    may_pin_variant: bool = False

    def may_call(self, model: str) -> bool:
        return "*" in self.models or model in self.models or model.split("@")[0] in self.models


ANONYMOUS = Principal("anonymous", None, ("*",), 0)


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class KeyStore:
    def __init__(self, cfg: AuthConfig):
        self.cfg = cfg
        self._by_hash: dict[str, KeyConfig] = {k.sha256: k for k in cfg.keys}

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.cfg.enabled:
            return ANONYMOUS
        token = bearer(authorization)
        if token is None:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`", code="invalid_api_key")
        digest = hash_key(token)
        key = self._by_hash.get(digest)
        if key is None:
            raise Unauthorized("invalid API key (not recognised); ask the operator for a key", code="invalid_api_key")
        return Principal(key.name, digest, tuple(key.models), key.rate_limit_per_minute, key.may_pin_variant)

    def authorize(self, principal: Principal, model: str) -> None:
        if not principal.may_call(model):
            raise Forbidden(
                f"key {principal.name!r} may not call model {model!r}; it may call: {', '.join(principal.models)}",
                param="model",
            )

    def is_admin(self, authorization: str | None) -> bool:
        token, expected = bearer(authorization), self.cfg.admin_key_sha256
        return token is not None and expected is not None and hmac.compare_digest(hash_key(token), expected)

    def check_admin(self, authorization: str | None) -> None:
        """The admin API is closed by default, auth.enabled or not."""
        if self.cfg.local_dev_open_admin:  # config refuses it unless gateway.host is loopback
            return
        if self.cfg.admin_key_sha256 is None:
            raise Forbidden(
                "the admin API is closed: no admin key is configured. Set auth.admin_key_sha256 to the sha256 "
                "of a secret key (python -c \"import hashlib; print(hashlib.sha256(b'KEY').hexdigest())\") "
                "and send `Authorization: Bearer KEY`; or, on a gateway bound to 127.0.0.1 only, "
                "auth.local_dev_open_admin: true",
                code="admin_key_not_configured",
            )
        if not self.is_admin(authorization):
            raise Unauthorized(
                "admin endpoints need the admin key: `Authorization: Bearer <admin key>`", code="invalid_api_key"
            )

    def check_pin(self, principal: Principal, authorization: str | None) -> None:
        """Choosing an experiment's variant (X-Loraplane-Variant) is for the admin key, keys with
        `may_pin_variant: true`, and the open local-development admin."""
        if principal.may_pin_variant or self.cfg.local_dev_open_admin or self.is_admin(authorization):
            return
        raise Forbidden(
            f"key {principal.name!r} may not pin a variant with X-Loraplane-Variant: drop the header, "
            "or use the admin key or a key with `may_pin_variant: true`",
            param="X-Loraplane-Variant",
        )


Bucket = Literal["requests", "feedback"]  # a key's completions, and its POST /v1/feedback calls


class RateLimiter:
    """Token bucket per key and bucket: `rate_limit_per_minute` tokens, refilled continuously.
    Feedback has a bucket of its own: rating each answer never eats into the key's completions."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._buckets: dict[tuple[Bucket, str], tuple[float, float]] = {}  # -> (tokens, last time)

    def take(self, principal: Principal, bucket: Bucket = "requests") -> None:
        limit = principal.rate_limit_per_minute
        if limit <= 0:
            return
        now = self._clock()
        tokens, last = self._buckets.get((bucket, principal.name), (float(limit), now))
        tokens = min(float(limit), tokens + (now - last) * limit / 60.0)
        if tokens < 1.0:
            retry_after = math.ceil((1.0 - tokens) * 60.0 / limit)
            self._buckets[(bucket, principal.name)] = (tokens, now)
            raise RateLimited(
                f"key {principal.name!r} is over its limit of {limit} {bucket} per minute; retry after {retry_after} s",
                retry_after_s=retry_after,
            )
        self._buckets[(bucket, principal.name)] = (tokens - 1.0, now)
