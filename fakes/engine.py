"""A tiny OpenAI-compatible streaming server that answers like a vLLM engine, without a model.

For fast tests and for measuring gateway overhead: each completion streams `tokens` tokens,
the first after `ttft_ms`, the rest `itl_ms` apart, and honours `max_tokens`, `stream` and
`stream_options.include_usage`. It also answers `/health`, `/v1/models`, `/metrics` and
vLLM's runtime LoRA endpoints (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`) with
vLLM's own messages and status codes. Like vLLM it builds the response id from the request's
`X-Request-Id` header or the body's `request_id` (`chatcmpl-<id>` / `cmpl-<id>`) and refuses a
prompt plus `max_tokens` beyond `max_model_len` with a 400.

Faults to inject, per model name where it says so:
- `error_rate`: that fraction of completions answered 500;
- `fail_status`: model -> the HTTP status every completion for it answers (e.g. 503);
- `slow_ms`: model -> extra time to first token (e.g. to make one A/B variant slower);
- `stream_faults`: model -> "error@N" (vLLM's in-stream error event after N tokens, then
  `[DONE]`), "truncate@N" (the stream ends cleanly after N tokens, no finish, no `[DONE]`) or
  "die@N" (the connection breaks after N tokens, as when the engine process dies; die@0: after
  the headers, before any event; a non-streamed request breaks after the headers);
- `fail_load`: adapter names whose load answers 500;
- `replies`: model -> a fixed answer text (one token), e.g. JSON or a judge's score.
With `api_key` set it guards /v1 like vLLM's `--api-key`
(vllm/entrypoints/serve/middleware/authenticate.py): 401 without `Bearer <key>`, /health stays open.

    python -m fakes.engine --port 8100 --tokens 32 --itl-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


@dataclass
class MockSettings:
    base: str = "smollm2-135m-instruct"  # the served base model name
    tokens: int = 16  # tokens per completion (capped by the request's max_tokens)
    ttft_ms: float = 20.0  # delay before the first token
    itl_ms: float = 5.0  # delay between tokens
    error_rate: float = 0.0  # fraction of completions answered with HTTP 500
    seed: int = 0
    slow_ms: dict[str, float] = field(default_factory=dict)  # model name -> extra delay before token 1
    fail_load: tuple[str, ...] = ()  # adapter names whose /v1/load_lora_adapter answers 500
    api_key: str | None = None  # like vLLM's --api-key: /v1 needs `Authorization: Bearer <key>`
    fail_status: dict[str, int] = field(default_factory=dict)  # model name -> status of every completion
    stream_faults: dict[str, str] = field(default_factory=dict)  # model name -> "error@N" | "truncate@N" | "die@N"
    max_model_len: int = 2048  # prompt tokens + max_tokens beyond this: 400, like vLLM
    replies: dict[str, str] = field(default_factory=dict)  # model name -> the text its completions answer


STREAM_FAULTS = ("error", "truncate", "die")


def parse_stream_fault(fault: str) -> tuple[str, int]:
    """ "error@3" -> ("error", 3): the kind of fault and after how many tokens it strikes."""
    kind, _, after = fault.partition("@")
    if kind not in STREAM_FAULTS or not after.isdigit():
        raise ValueError(f"stream fault {fault!r}: expected KIND@N with KIND one of {', '.join(STREAM_FAULTS)}")
    return kind, int(after)


def _error(status: int, err_type: str, message: str, param: str | None = None) -> JSONResponse:
    """vLLM's own error body (its `code` is the HTTP status), not the gateway's: this fake imitates vLLM
    and must not import serving/, the code it stands in front of in tests."""
    body = {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def _prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        text = " ".join(str(m.get("content", "")) for m in body["messages"])
    else:
        text = str(body.get("prompt", ""))
    return max(1, len(text.split()))


def _chunk(kind: str, rid: str, model: str, text: str | None, finish: str | None) -> dict[str, Any]:
    if kind == "chat":
        delta = {} if text is None else {"content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}


class MockEngine:
    """State of one mock engine: its settings, loaded adapters and request counters."""

    def __init__(self, settings: MockSettings):
        self.settings = settings
        self.adapters: dict[str, str] = {}  # lora_name -> lora_path
        self.rng = random.Random(settings.seed)
        self.running = 0
        self.completed = 0
        self.refused = 0  # requests refused for a missing/wrong API key

    def served(self, model: str) -> bool:
        return model == self.settings.base or model in self.adapters

    def models_body(self) -> dict[str, Any]:
        base = self.settings.base
        cards = [{"id": base, "object": "model", "owned_by": "vllm", "root": base, "parent": None}]
        cards += [
            {"id": name, "object": "model", "owned_by": "vllm", "root": path, "parent": base}
            for name, path in self.adapters.items()
        ]
        return {"object": "list", "data": cards}

    def pieces(self, model: str, n_tokens: int) -> list[str]:
        """The answer's tokens: the model's fixed reply as one token, else n_tokens words."""
        if model in self.settings.replies:
            return [self.settings.replies[model]][:n_tokens]
        return [f" {WORDS[i % len(WORDS)]}" for i in range(n_tokens)]

    async def stream(self, kind: str, body: dict[str, Any], n_tokens: int, rid: str) -> AsyncIterator[bytes]:
        s, model = self.settings, body["model"]
        fault, fault_after = parse_stream_fault(s.stream_faults[model]) if model in s.stream_faults else ("", -1)
        self.running += 1
        try:
            if fault == "die" and fault_after == 0:
                raise ConnectionAbortedError("injected engine death (mock stream_faults die@0)")
            if kind == "chat":  # vLLM's first chat chunk carries the role and no content
                first = _chunk(kind, rid, model, None, None)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield _sse(first)
            ttft_ms = s.ttft_ms + s.slow_ms.get(model, 0.0)
            for i, piece in enumerate(self.pieces(model, n_tokens)):
                if i == fault_after:
                    break
                await asyncio.sleep((ttft_ms if i == 0 else s.itl_ms) / 1000)
                yield _sse(_chunk(kind, rid, model, piece, None))
            if fault == "die" and fault_after <= n_tokens:  # uvicorn drops the connection mid-body
                raise ConnectionAbortedError(f"injected engine death (mock stream_faults die@{fault_after})")
            if fault == "truncate" and fault_after <= n_tokens:
                return  # the body ends cleanly: no finish chunk, no [DONE]
            if fault == "error" and fault_after <= n_tokens:
                # vLLM's serving_chat/serving_completion: an exception while generating becomes one
                # error event (create_streaming_error_response), then [DONE]
                error = {"message": "injected generation failure (mock stream_faults)", "type": "InternalServerError"}
                yield _sse({"error": {**error, "param": None, "code": 500}})
                yield b"data: [DONE]\n\n"
                return
            finish = "length" if n_tokens == body.get("max_tokens") else "stop"
            yield _sse(_chunk(kind, rid, model, None if kind == "chat" else "", finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                tail = _chunk(kind, rid, model, None, None)
                tail["choices"], tail["usage"] = [], _usage(body, n_tokens)
                yield _sse(tail)
            yield b"data: [DONE]\n\n"
        finally:
            self.running -= 1
            self.completed += 1

    async def complete(self, kind: str, body: dict[str, Any], n_tokens: int, rid: str) -> dict[str, Any]:
        s = self.settings
        await asyncio.sleep((s.ttft_ms + s.slow_ms.get(body["model"], 0.0) + s.itl_ms * max(0, n_tokens - 1)) / 1000)
        self.completed += 1
        text = "".join(self.pieces(body["model"], n_tokens))
        finish = "length" if n_tokens == body.get("max_tokens") else "stop"  # as when streamed
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        obj = "chat.completion" if kind == "chat" else "text_completion"
        return {"id": rid, "object": obj, "model": body["model"], "choices": [choice], "usage": _usage(body, n_tokens)}


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _usage(body: dict[str, Any], n_tokens: int) -> dict[str, int]:
    prompt = _prompt_tokens(body)
    return {"prompt_tokens": prompt, "completion_tokens": n_tokens, "total_tokens": prompt + n_tokens}


GUARDED = ("/v1", "/v2", "/inference", "/cohere")  # vLLM's GUARDED_PREFIX


class ApiKeyGuard:
    """With `api_key` set: 401 on GUARDED paths without `Bearer <key>`. Pure ASGI, as vLLM's is (a
    function middleware would end a stream cleanly when the engine breaks off)."""

    def __init__(self, app: ASGIApp, engine: MockEngine):
        self.app, self.engine = app, engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self.engine.settings.api_key
        if scope["type"] == "http" and key and scope["path"].startswith(GUARDED):
            auth = dict(scope["headers"]).get(b"authorization", b"").decode(errors="replace")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token, key):
                self.engine.refused += 1
                await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: MockSettings | None = None) -> FastAPI:
    engine = MockEngine(settings or MockSettings())
    app = FastAPI(title="loraplane mock upstream")
    app.state.engine = engine

    app.add_middleware(ApiKeyGuard, engine=engine)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return engine.models_body()

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f'vllm:num_requests_running{{model_name="{engine.settings.base}"}} {engine.running}',
            "# TYPE vllm:num_requests_waiting gauge",
            f'vllm:num_requests_waiting{{model_name="{engine.settings.base}"}} 0',
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    @app.post("/v1/load_lora_adapter")
    async def load_lora(request: Request) -> Response:
        body = await request.json()
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error(400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.")
        if name == engine.settings.base:
            return _error(400, "InvalidUserInput", f"The lora adapter '{name}' conflicts with a served base model.")
        if name in engine.adapters and not body.get("load_inplace"):
            msg = f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, set 'load_inplace' to True."  # noqa: E501
            return _error(400, "InvalidUserInput", msg)
        if name in engine.settings.fail_load:
            return _error(500, "InternalServerError", f"injected load failure for '{name}' (mock fail_load)")
        engine.adapters[name] = path
        return Response(f"Success: LoRA adapter '{name}' added successfully.", status_code=200)

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(request: Request) -> Response:
        name = (await request.json()).get("lora_name")
        if not name:
            return _error(400, "InvalidUserInput", "'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in engine.adapters:
            return _error(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
        del engine.adapters[name]
        return Response(f"Success: LoRA adapter '{name}' removed successfully.", status_code=200)

    async def completion(kind: str, request: Request) -> Response:
        body = await request.json()
        model, s = body.get("model"), engine.settings
        if not engine.served(model):
            return _error(404, "NotFoundError", f"The model `{model}` does not exist.", "model")
        if model in s.fail_status:
            status = s.fail_status[model]
            return _error(status, "InternalServerError", f"injected status {status} for '{model}' (mock fail_status)")
        if engine.rng.random() < s.error_rate:
            return _error(500, "InternalServerError", "injected fault (mock error_rate)")
        n_tokens = min(s.tokens, int(body.get("max_tokens") or s.tokens))
        prompt, asked = _prompt_tokens(body), int(body.get("max_tokens") or 0)
        if prompt + asked > s.max_model_len:
            message = (
                f"This model's maximum context length is {s.max_model_len} tokens. However, you requested "
                f"{prompt + asked} tokens ({prompt} in the messages, {asked} in the completion). "
                "Please reduce the length of the messages or completion."
            )
            return _error(400, "BadRequestError", message)
        # vLLM's response id: the X-Request-Id header, else the body's request_id, else a random uuid
        base_id = request.headers.get("x-request-id") or body.get("request_id") or uuid.uuid4().hex
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{base_id}"
        if body.get("stream"):
            return StreamingResponse(engine.stream(kind, body, n_tokens, rid), media_type="text/event-stream")
        if engine.settings.stream_faults.get(body["model"], "").startswith("die@"):
            return StreamingResponse(_dies(), media_type="application/json")  # headers, then the break
        return JSONResponse(await engine.complete(kind, body, n_tokens, rid))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await completion("chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await completion("text", request)

    return app


async def _dies() -> AsyncIterator[bytes]:
    """A body that breaks before its first byte (a non-streamed answer under a die@N fault)."""
    raise ConnectionAbortedError("injected engine death (mock stream_faults die@N, not streamed)")
    yield b""  # pragma: no cover  (makes this an async generator)


def _pairs(items: list[str]) -> list[tuple[str, str]]:
    """["a=1", "b=2"] -> [("a", "1"), ("b", "2")] (MODEL=VALUE flags)."""
    return [(name, value) for name, _, value in (item.rpartition("=") for item in items)]


def main(argv: list[str] | None = None) -> int:
    defaults = MockSettings()
    p = argparse.ArgumentParser(prog="python -m fakes.engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--base", default=defaults.base, help="served base model name")
    p.add_argument("--tokens", type=int, default=defaults.tokens, help="tokens per completion")
    p.add_argument("--ttft-ms", type=float, default=defaults.ttft_ms, help="delay before the first token")
    p.add_argument("--itl-ms", type=float, default=defaults.itl_ms, help="delay between tokens")
    p.add_argument("--error-rate", type=float, default=defaults.error_rate, help="fraction answered 500")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--api-key", default=None, help="guard /v1 like vLLM's --api-key")
    p.add_argument("--slow", action="append", default=[], metavar="MODEL=MS", help="extra TTFT for a model name")
    p.add_argument("--fail-load", action="append", default=[], metavar="ADAPTER", help="its load answers 500")
    p.add_argument("--fail-status", action="append", default=[], metavar="MODEL=STATUS", help="every completion")
    p.add_argument("--stream-fault", action="append", default=[], metavar="MODEL=KIND@N", help="error|truncate|die@N")
    p.add_argument("--max-model-len", type=int, default=defaults.max_model_len, help="prompt + max_tokens limit")
    args = p.parse_args(argv)
    slow = {name: float(ms) for name, ms in _pairs(args.slow)}
    faults = dict(_pairs(args.stream_fault))
    for fault in faults.values():
        parse_stream_fault(fault)  # a bad one fails here, naming it
    settings = MockSettings(
        args.base,
        args.tokens,
        args.ttft_ms,
        args.itl_ms,
        args.error_rate,
        args.seed,
        slow,
        fail_load=tuple(args.fail_load),
        api_key=args.api_key,
        fail_status={name: int(status) for name, status in _pairs(args.fail_status)},
        stream_faults=faults,
        max_model_len=args.max_model_len,
    )

    import uvicorn

    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
