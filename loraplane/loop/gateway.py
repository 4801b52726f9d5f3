"""What the loop asks the gateway, over HTTP only (admin API): adapter versions, rollouts."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import httpx

from loraplane.loop.errors import LoopError
from loraplane.loop.spec import GatewaySpec

VERSION_NUMBER = re.compile(r"^v(\d+)$")


class Gateway:
    def __init__(self, spec: GatewaySpec):
        self.spec = spec
        self.url = spec.url.rstrip("/")
        key = os.environ.get(spec.admin_key_env)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def call(self, method: str, path: str, body: dict | None = None, ok: tuple[int, ...] = ()) -> tuple[int, Any]:
        """(status, JSON body); LoopError for an unreachable gateway or a status >= 400 not in `ok`."""
        try:
            resp = httpx.request(
                method, f"{self.url}{path}", json=body, headers=self.headers, timeout=self.spec.timeout_s
            )
        except httpx.HTTPError as exc:
            raise LoopError(f"gateway {self.url} unreachable ({exc!r}); is `loraplane serve` running?") from None
        try:
            payload = resp.json()
        except ValueError:
            payload = {"error": {"message": resp.text[:300]}}
        if resp.status_code >= 400 and resp.status_code not in ok:
            message = (payload.get("error") or {}).get("message") if isinstance(payload, dict) else payload
            raise LoopError(f"gateway {method} {path} answered {resp.status_code}: {message}")
        return resp.status_code, payload

    def versions(self, adapter: str) -> tuple[list[str], str]:
        """(published versions, oldest first; the stable one). LoopError naming the adapters the
        gateway knows when `adapter` is not one of them."""
        _, payload = self.call("GET", "/admin/adapters")
        rows = [a for a in payload["data"] if a["name"] == adapter]
        if not rows:
            known = sorted({a["name"] for a in payload["data"]})
            raise LoopSpecAdapterError(
                f"adapter {adapter!r} is unknown to the gateway at {self.url}; adapters: {', '.join(known) or 'none'} "
                "(publish a first version with `loraplane train` or `loraplane adapters publish`)"
            )
        versions = sorted((a["version"] for a in rows), key=lambda v: int(VERSION_NUMBER.match(v).group(1)))  # type: ignore[union-attr]
        stable = next(a["version"] for a in rows if a["stable"]) if any(a["stable"] for a in rows) else versions[-1]
        return versions, stable

    def wait_listed(self, adapter: str, version: str) -> None:
        """Until the gateway lists adapter@version (its registry poll picks up a publish)."""
        deadline = time.monotonic() + self.spec.publish_wait_s
        while version not in self.versions(adapter)[0]:
            if time.monotonic() > deadline:
                raise LoopError(
                    f"{adapter}@{version} was trained but the gateway does not list it after "
                    f"{self.spec.publish_wait_s:g} s; does the gateway read the same adapters directory?"
                )
            time.sleep(0.5)

    def rollout(self, name: str) -> dict | None:
        status, payload = self.call("GET", f"/admin/rollouts/{name}", ok=(404,))
        return None if status == 404 else payload

    def start_rollout(self, name: str, body: dict) -> dict:
        return self.call("POST", f"/admin/rollouts/{name}", body)[1]


class LoopSpecAdapterError(LoopError):
    """The spec names an adapter the gateway does not serve: a bad input, nothing is trained."""
