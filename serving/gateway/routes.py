"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.auth import Principal
from serving.errors import BadRequest, RateLimited
from serving.gateway.proxy import Call, forward
from serving.gateway.state import GatewayState, PrincipalDep, StateDep
from serving.registry import check_model_field

router = APIRouter()


async def read_body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw or b"")
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def check_limits(body: dict, max_tokens_limit: int) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= max_tokens_limit:
            raise BadRequest(f"`{field}` must be an integer in 1..{max_tokens_limit}, got {value!r}", param=field)


def request_key(request: Request, body: dict, principal: Principal) -> str:
    """The A/B key: the `user` field, else X-User-Id, else the API key, else the client address."""
    user = body.get("user")
    if isinstance(user, str) and user:
        return f"user:{user}"
    if header := request.headers.get("x-user-id"):
        return f"user:{header}"
    if principal.key_hash:
        return f"key:{principal.key_hash}"
    return f"addr:{request.client.host if request.client else 'unknown'}"


async def handle(request: Request, state: GatewayState, principal: Principal, route: str) -> Response:
    started = time.perf_counter()
    body = await read_body(request)
    required = "messages" if route == "chat" else "prompt"
    model = check_model_field(body.get("model"))
    value = body.get(required)
    if route == "chat" and (not isinstance(value, list) or not value):
        raise BadRequest("`messages` is required: a non-empty list of {role, content} objects", param="messages")
    if route == "completions" and not isinstance(value, (str, list)):
        raise BadRequest("`prompt` is required: a string or a list of strings", param="prompt")
    check_limits(body, state.cfg.gateway.max_tokens_limit)
    state.keys.authorize(principal, model)
    state.limiter.take(principal)
    if state.in_flight >= state.cfg.gateway.max_in_flight:
        raise RateLimited(
            f"the gateway is at its limit of {state.cfg.gateway.max_in_flight} requests in flight; retry shortly",
            retry_after_s=1,
        )
    target = state.resolve(model, request_key(request, body, principal), request.headers.get("x-loraplane-variant"))
    path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
    call = Call(route, path, {**body, "model": target.upstream_model}, target, started, key_name=principal.name)
    state.in_flight += 1
    try:
        return await forward(state, call)
    finally:
        state.in_flight -= 1


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: StateDep, principal: PrincipalDep) -> Response:
    return await handle(request, state, principal, "chat")


@router.post("/v1/completions")
async def completions(request: Request, state: StateDep, principal: PrincipalDep) -> Response:
    return await handle(request, state, principal, "completions")


@router.get("/v1/models")
async def models(state: StateDep, principal: PrincipalDep) -> dict:
    created = int(state.started_at)
    base = state.base_model
    data = [{"id": base, "object": "model", "created": created, "owned_by": "loraplane", "root": base}]
    for name in state.registry.names():
        versions = state.registry.versions(name)
        data.append(
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "loraplane",
                "root": base,
                "parent": base,
                "latest": f"{name}@{versions[-1]}",
                "stable": f"{name}@{state.control.stable_version(name)}",  # what bare `name` serves
                "versions": versions,
            }
        )
        data += [
            {
                "id": f"{name}@{v}",
                "object": "model",
                "created": created,
                "owned_by": "loraplane",
                "root": base,
                "parent": base,
            }
            for v in versions
        ]
    data += [
        {
            "id": e.name,
            "object": "model",
            "created": created,
            "owned_by": "loraplane",
            "root": base,
            "experiment": True,
            "variants": e.variants,
        }
        for e in state.experiments.all()
    ]
    return {"object": "list", "data": [m for m in data if principal.may_call(str(m["id"]))]}
