"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import time
from typing import Protocol

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.auth import Principal
from serving.errors import BadRequest
from serving.gateway.abkey import random_key, request_key, unit_of
from serving.gateway.admission import Leased
from serving.gateway.limits import apply_limits, read_body
from serving.gateway.openapi import CHAT_BODY, COMPLETION_BODY, request_body
from serving.gateway.proxy import forward
from serving.gateway.recorder import Call, upstream_body
from serving.gateway.refusals import model_label, remember_labels
from serving.gateway.state import GatewayState, PrincipalDep, StateDep
from serving.registry import check_model_field

router = APIRouter()


class Translation(Protocol):
    """A route served as another route's call (serving/gateway/responses.py: Responses as chat)."""

    def request(self, body: dict) -> dict: ...  # the client's body -> the upstream route's body

    def response(self, response: Response) -> Response: ...  # the upstream route's answer -> the client's


async def handle(
    request: Request, state: GatewayState, principal: Principal, route: str, translation: Translation | None = None
) -> Response:
    started = time.perf_counter()
    body = await read_body(request, state.cfg.gateway.max_body_bytes)
    if translation is not None:
        body = translation.request(body)
    shape = "completions" if route == "completions" else "chat"  # what the body is upstream
    required = "messages" if shape == "chat" else "prompt"
    model = check_model_field(body.get("model"))
    remember_labels(request, model_label(state, model))
    value = body.get(required)
    if shape == "chat" and (not isinstance(value, list) or not value):
        raise BadRequest("`messages` is required: a non-empty list of {role, content} objects", param="messages")
    if shape == "completions" and not isinstance(value, (str, list)):
        raise BadRequest("`prompt` is required: a string or a list of strings", param="prompt")
    apply_limits(body, shape, state.cfg)
    state.keys.authorize(principal, model)
    await state.limiter.take(principal)
    await state.budgets.check(principal.name, model)  # 429 when the key's daily tokens are spent
    lease = state.admission.admit()
    try:
        pinned = request.headers.get("x-loraplane-variant")
        if pinned is not None:
            state.keys.check_pin(principal, request.headers.get("authorization"))
        key = request_key(request, body, principal, state.cfg.gateway.ab_key_sources)
        if key is None and model in state.experiments:
            state.metrics.unkeyed_requests.labels(route).inc()
        key = key or random_key()
        target = state.resolve(model, key, pinned)
        remember_labels(request, target.model_label, target.variant_label)
        call = Call(
            route,
            upstream_body(body, target.upstream_model),
            target,
            started,
            state.metrics,
            state.budgets.log,  # counts the answer's tokens against the key's budgets, then logs it
            key_name=principal.name,
            unit=unit_of(key),
            grade=state.grading.offer,
        )
        lookup = await state.cache.lookup(request.headers, call)  # serving/gateway/cache.py
        if lookup.hit is not None:
            response = lookup.hit
        else:
            await lease.wait_upstream()
            response = await state.cache.keep(lookup, await forward(state, call))
            state.shadow.after(state, call)  # a rollout's shadow stage: maybe mirror to the candidate
        if translation is not None:
            response = translation.response(response)  # a cache hit is translated as a fresh answer
    except BaseException:
        lease.release()
        raise
    return Leased(response, lease.release)  # a stream holds its lease until it ends


@router.post("/v1/chat/completions", openapi_extra=request_body(CHAT_BODY))
async def chat_completions(request: Request, state: StateDep, principal: PrincipalDep) -> Response:
    return await handle(request, state, principal, "chat")


@router.post("/v1/completions", openapi_extra=request_body(COMPLETION_BODY))
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
