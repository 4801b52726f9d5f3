"""OpenAI-compatible routes: the proxied ones (one per RouteSpec, serving/gateway/protocol.py) and /v1/models.

    handle(request, spec, path, principal, translation=None)

is the whole request path of a proxied route: read the body (bounded), translate it (a route that
speaks another protocol to its client: protocol.Translation), check it against the spec (required
field, limits), authorize, rate-limit, admit, resolve the variant, forward, log, translate the
answer back. `add_route(router, spec)` serves a spec without a translation.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.gateway.abkey import random_key, request_key, unit_of
from serving.gateway.admission import Leased
from serving.gateway.auth import Principal
from serving.gateway.deps import CallerDep, ControlDep, RegistryDep, RequestPathDep, StartedAtDep
from serving.gateway.limits import apply_limits, read_body
from serving.gateway.openapi import request_body
from serving.gateway.protocol import ROUTES, RouteSpec, Translation
from serving.gateway.recorder import Call, upstream_body
from serving.gateway.refusals import model_label, remember_labels
from serving.gateway.state import RequestPath
from serving.registry import check_model_field

router = APIRouter()


async def handle(
    request: Request,
    spec: RouteSpec,
    path: RequestPath,
    principal: Principal,
    translation: Translation | None = None,
) -> Response:
    """Serve one request of `spec`'s protocol; `translation`: this request's, when the client speaks
    another protocol (its body is translated before any check, the answer after forwarding)."""
    started = time.perf_counter()
    remember_labels(request, route=spec.name)
    body = await read_body(request, path.cfg.gateway.max_body_bytes)
    if translation is not None:
        body = translation.request(body)
    model = check_model_field(body.get("model"))
    remember_labels(request, model_label(path.resolver.registry, path.control, model))
    spec.check_required(body)
    apply_limits(body, spec, path.cfg)
    path.keys.authorize(principal, model)
    await path.limiter.take(principal)
    await path.budgets.check(principal.name, model)  # 429 when the key's daily tokens are spent
    lease = path.admission.admit()
    try:
        call = _call(request, spec, path, principal, body, model, started)
        lookup = await path.cache.lookup(request.headers, call)  # serving/gateway/cache.py
        if lookup.hit is not None:
            response = lookup.hit
        else:
            await lease.wait_upstream()
            response = await path.cache.keep(lookup, await path.proxy.forward(call))
            path.shadow.after(path, call)  # a rollout's shadow stage: maybe mirror to the candidate
        if translation is not None:
            response = translation.response(response)  # a cache hit is translated as a fresh answer
    except BaseException:
        lease.release()
        raise
    return Leased(response, lease.release)  # a stream holds its lease until it ends


def _call(
    request: Request,
    spec: RouteSpec,
    path: RequestPath,
    principal: Principal,
    body: dict[str, Any],
    model: str,
    started: float,
) -> Call:
    """The request's first call: its variant chosen (sticky per A/B key, or pinned), its body for the engine."""
    pinned = request.headers.get("x-loraplane-variant")
    if pinned is not None:
        path.keys.check_pin(principal, request.headers.get("authorization"))
    key = request_key(request, body, principal, path.cfg.gateway.ab_key_sources)
    if key is None and model in path.control.experiments:
        path.metrics.unkeyed_requests.labels(spec.name).inc()
    key = key or random_key()
    target = path.resolver.resolve(model, key, pinned)
    remember_labels(request, target.model_label, target.variant_label)
    return Call(
        spec,
        upstream_body(body, target.upstream_model),
        target,
        started,
        path.metrics,
        path.budgets.log,  # counts the answer's tokens against the key's budgets, then logs it
        key_name=principal.name,
        unit=unit_of(key),
        grade=path.grading.offer,
    )


def add_route(router: APIRouter, spec: RouteSpec) -> None:
    """Serve `spec` at `spec.path` (POST), documented with `spec.openapi_body()`."""

    async def endpoint(request: Request, path: RequestPathDep, principal: CallerDep) -> Response:
        return await handle(request, spec, path, principal)

    extra = request_body(spec.openapi_body())
    router.add_api_route(spec.path, endpoint, methods=["POST"], name=spec.operation, openapi_extra=extra)


for _spec in ROUTES:
    add_route(router, _spec)


@router.get("/v1/models")
async def models(registry: RegistryDep, control: ControlDep, started_at: StartedAtDep, principal: CallerDep) -> dict:
    created = int(started_at)
    base = registry.base.name
    data = [{"id": base, "object": "model", "created": created, "owned_by": "loraplane", "root": base}]
    for name in registry.names():
        versions = registry.versions(name)
        data.append(
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "loraplane",
                "root": base,
                "parent": base,
                "latest": f"{name}@{versions[-1]}",
                "stable": f"{name}@{control.stable_version(name)}",  # what bare `name` serves
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
        for e in control.experiments.all()
    ]
    return {"object": "list", "data": [m for m in data if principal.may_call(str(m["id"]))]}
