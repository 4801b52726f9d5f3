"""One route description (serving/gateway/protocol.py) read by the handler, the limits and /openapi.json:
a spec registered in a test app is checked, bounded, documented, forwarded and counted with no other edit."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serving.errors import BadRequest
from serving.gateway.deps import CallerDep, RequestPathDep
from serving.gateway.protocol import COMPLETIONS, ROUTES, RouteSpec
from serving.gateway.routes import add_route, handle
from tests.conftest import GatewayThread, free_port
from tests.serving.test_gateway_faults import BASE, dirs, engine, gateway_app  # noqa: F401
from tests.serving.test_gateway_refusals import request_counts


def no_shouting(body: dict[str, Any]) -> None:
    if body["note"].isupper():
        raise BadRequest("`note` is all capitals: write it in lower case", param="note")


NOTES = RouteSpec(
    name="notes",
    path="/v1/notes",
    upstream_path="/v1/completions",  # the fake engine answers any body there
    id_prefix="note-",
    required="note",
    accepts=lambda value: isinstance(value, str) and bool(value.strip()),
    required_error="`note` is required: a non-empty string",
    properties={"note": {"type": "string", "minLength": 1}},
    answer_path=("text",),
    chunk_path=("text",),
    limits=(no_shouting,),
)


def test_a_new_spec_is_checked_bounded_documented_and_served(dirs) -> None:  # noqa: F811
    with engine() as eng, GatewayThread(gateway_app(dirs, [eng.url]), free_port()) as plain:
        assert httpx.post(f"{plain.url}/v1/notes", json={"model": BASE, "note": "hi"}).status_code == 404
        app = gateway_app(dirs, [eng.url])
        add_route(app.router, NOTES)
        with GatewayThread(app, free_port()) as gw:
            schema = httpx.get(f"{gw.url}/openapi.json").json()
            operation = schema["paths"]["/v1/notes"]["post"]
            body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert body_schema["required"] == ["model", "note"]
            assert body_schema["properties"]["note"] == {"type": "string", "minLength": 1}
            assert body_schema["properties"]["n"]["maximum"] == 4  # the shared fields come along
            assert operation["operationId"] == "notes_v1_notes_post"

            def post(**body: Any) -> httpx.Response:
                return httpx.post(f"{gw.url}/v1/notes", json={"model": BASE, **body}, timeout=30)

            missing = post(messages=[{"role": "user", "content": "hi"}]).json()["error"]
            assert missing["param"] == "note" and missing["message"] == NOTES.required_error
            assert post(note="hi", n=5).json()["error"]["param"] == "n"  # the shared limits apply
            assert "lower case" in post(note="HELLO").json()["error"]["message"]  # and the spec's own

            answer = post(note="hello there", max_tokens=3)
            assert answer.status_code == 200, answer.text
            assert answer.json()["id"].startswith("note-")
            counts = request_counts(gw.url)
            assert counts[("notes", BASE, "none", "2xx")] == 1.0
            assert counts[("notes", BASE, "none", "4xx")] == 3.0  # refusals carry the spec's route label


def test_built_in_routes_are_documented_from_their_specs(dirs) -> None:  # noqa: F811
    schema = gateway_app(dirs, []).openapi()
    for spec in ROUTES:
        operation = schema["paths"][spec.path]["post"]
        body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body_schema == spec.openapi_body()
        assert body_schema["required"] == ["model", spec.required]
        assert operation["operationId"] == f"{spec.operation}{spec.path.replace('/', '_')}_post"


SHOUT = replace(COMPLETIONS, name="shout", path="/v1/shout", id_prefix="shout_")


class Shouting:
    """A client protocol of its own: {"model", "words": [...]} in, {"id", "loud"} out; completions upstream."""

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"model": body.get("model"), "prompt": body.get("words"), "max_tokens": 3}

    def response(self, response: Response) -> Response:
        answer = json.loads(bytes(response.body))
        loud = {"id": answer["id"], "loud": answer["choices"][0]["text"].upper()}
        return JSONResponse(loud, response.status_code, headers={"X-Loraplane-Adapter": "none"})


def test_a_translated_route_is_checked_as_its_upstream_spec(dirs) -> None:  # noqa: F811
    shout = APIRouter()

    @shout.post("/v1/shout")
    async def endpoint(request: Request, path: RequestPathDep, principal: CallerDep) -> Response:
        return await handle(request, SHOUT, path, principal, Shouting())

    with engine() as eng:
        app = gateway_app(dirs, [eng.url])
        app.include_router(shout)
        with GatewayThread(app, free_port()) as gw:

            def post(**body: Any) -> httpx.Response:
                return httpx.post(f"{gw.url}/v1/shout", json={"model": BASE, **body}, timeout=30)

            assert post(words=7).json()["error"]["param"] == "prompt"  # the upstream spec's check
            too_many = post(words=["x"] * 65).json()["error"]  # and its limits, on the translated body
            assert too_many["param"] == "prompt" and "65 prompts" in too_many["message"]
            answer = post(words=["hello there"])
            assert answer.status_code == 200, answer.text
            assert answer.json()["id"].startswith("shout_") and answer.json()["loud"].isupper()
            counts = request_counts(gw.url)
            assert counts[("shout", BASE, "none", "2xx")] == 1.0 and counts[("shout", BASE, "none", "4xx")] == 2.0
