"""ASGI middleware for vLLM's `--middleware`: every engine path needs the engine key except probes and metrics.

vLLM's own `--api-key` guards only paths under /v1, /v2, /inference and /cohere. With runtime LoRA
updating on, vLLM also serves `POST /adapters` (load an adapter from any path), `POST /invocations`
(inference), `/tokenize` and more without a key. Both ways of running engines start vLLM with this
class as `--middleware`, and the gateway sends `Authorization: Bearer <key>`:
- `loraplane serve` (serving/engines/process.py): `--middleware=loraplane_vllm.engine_key_guard.EngineKeyGuard`;
- the Helm chart mounts this file (helm/loraplane/files/engine_key_guard.py is a link to it) into
  every engine pod from a ConfigMap and passes `--middleware=engine_key_guard.EngineKeyGuard`.
Standard library only, so it runs in any engine image, and imports nothing else from this package.
"""

from __future__ import annotations

import hmac
import json
import os

KEY_ENV = "LORAPLANE_ENGINE_API_KEY"
# Answered without a key, GET/HEAD only: kubelet probes and the Prometheus scraper.
OPEN_PATHS = frozenset({"/health", "/metrics", "/ping", "/version"})


class EngineKeyGuard:
    def __init__(self, app) -> None:
        key = os.environ.get(KEY_ENV, "")
        if not key:
            raise RuntimeError(f"{KEY_ENV} is empty: the engine key guard will not start an engine without a key")
        self.app = app
        self._key = key.encode()

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        is_probe = scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and path in OPEN_PATHS
        if is_probe or self._authorized(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await _unauthorized(send, path)


async def _unauthorized(send, path: str) -> None:
    message = f"{path} needs the engine key (Authorization: Bearer ...); only the loraplane gateway has it"
    body = json.dumps({"error": {"message": message, "type": "authentication_error", "code": 401}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
