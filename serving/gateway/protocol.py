"""The OpenAI routes the gateway proxies, each described once: a `RouteSpec`.

One spec is everything the gateway knows about a route's protocol, read by every step of the
request path instead of `route == "chat"` branches:

    routes.handle    spec.required / spec.check_required   -> 400 naming the field
    limits           spec.prompt_count, spec.limits        -> the route's own bounds
    openapi          spec.openapi_body()                   -> /openapi.json's request body
    recorder.Call    spec.name, spec.id_prefix, spec.upstream_path
    proxy / stream   spec.answer_text(), spec.chunk_text() -> the answer captured for the log

`routes.add_route(router, spec)` registers a spec as a POST route; `ROUTES` are the built-in ones.
A route that speaks another protocol to its client (e.g. a Responses request served as a chat call)
is a spec derived from the upstream one plus a per-request `Translation`:

    RESPONSES = dataclasses.replace(CHAT, name="responses", path="/v1/responses", id_prefix="resp_")
    return await routes.handle(request, RESPONSES, path, principal, ResponsesTranslation(path.cfg))

The checks, limits and answer reading then apply to the translated (upstream) body and answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi.responses import Response

from serving.errors import BadRequest
from serving.gateway import limits
from serving.gateway.openapi import CHAT_PROPERTIES, COMPLETION_PROPERTIES, object_schema
from serving.gateway.tools import check_tool_fields


class Translation(Protocol):
    """One request of a route that speaks another protocol to its client than to the engine."""

    def request(self, body: dict[str, Any]) -> dict[str, Any]: ...  # the client's body -> the upstream body

    def response(self, response: Response) -> Response: ...  # the upstream answer -> the client's


def _text_at(choice: Any, path: tuple[str, ...]) -> str:
    node = choice
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return str(node) if node else ""


def _tool_call_text(message: Any, *, whole: bool) -> str:
    """A tool call's text, where an answer has calls instead of content: a JSON answer's calls as
    JSON (logged and captured like text); a stream delta's function name and argument fragments
    (so a streamed call has a first token and logged text)."""
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not isinstance(calls, list) or not calls:
        return ""
    if whole:
        return json.dumps(calls)
    parts = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            parts += [str(fn[key]) for key in ("name", "arguments") if fn.get(key)]
    return "".join(parts)


@dataclass(frozen=True)
class RouteSpec:
    name: str  # the route label: metrics, the request log's `route` column ("chat", "completions")
    path: str  # where the gateway serves it
    upstream_path: str  # where the engine serves it
    id_prefix: str  # the response id's prefix, separator included, as OpenAI (and vLLM) spell it
    required: str  # the body field the route cannot do without (besides `model`)
    accepts: Callable[[Any], bool]  # whether the required field's value is usable
    required_error: str  # the 400's message when it is not
    properties: dict[str, Any]  # the route's own body fields, as JSON schema (openapi.py)
    answer_path: tuple[str, ...]  # where a choice of a JSON answer holds its text
    chunk_path: tuple[str, ...]  # where a choice of a stream chunk holds its text
    prompt_count: Callable[[dict[str, Any]], int] = limits.one_prompt  # prompts x n is bounded
    limits: tuple[Callable[[dict[str, Any]], None], ...] = ()  # the route's own bounds (limits.py)

    @property
    def operation(self) -> str:
        """The endpoint's name, from its path ("/v1/chat/completions" -> "chat_completions"):
        OpenAPI's operationId and summary derive from it."""
        return self.path.removeprefix("/v1/").replace("/", "_")

    def check_required(self, body: dict[str, Any]) -> None:
        if not self.accepts(body.get(self.required)):
            raise BadRequest(self.required_error, param=self.required)

    def openapi_body(self) -> dict[str, Any]:
        return object_schema(["model", self.required], self.properties)

    def answer_text(self, payload: dict[str, Any]) -> str:
        """The first choice's text in a JSON answer."""
        choices = payload.get("choices") or [{}]
        text = _text_at(choices[0], self.answer_path)
        return text or _tool_call_text(choices[0].get("message"), whole=True)

    def chunk_text(self, chunk: dict[str, Any]) -> str:
        """The text a stream chunk carries (its first choice with content)."""
        for choice in chunk.get("choices") or []:
            if text := _text_at(choice, self.chunk_path) or _tool_call_text(choice.get("delta"), whole=False):
                return text
        return ""


CHAT = RouteSpec(
    name="chat",
    path="/v1/chat/completions",
    upstream_path="/v1/chat/completions",
    id_prefix="chatcmpl-",
    required="messages",
    accepts=lambda value: isinstance(value, list) and bool(value),
    required_error="`messages` is required: a non-empty list of {role, content} objects",
    properties=CHAT_PROPERTIES,
    answer_path=("message", "content"),
    chunk_path=("delta", "content"),
    limits=(limits.check_roles, limits.check_chat_logprobs, check_tool_fields),  # tools: serving/gateway/tools.py
)
COMPLETIONS = RouteSpec(
    name="completions",
    path="/v1/completions",
    upstream_path="/v1/completions",
    id_prefix="cmpl-",
    required="prompt",
    accepts=lambda value: isinstance(value, (str, list)),
    required_error="`prompt` is required: a string or a list of strings",
    properties=COMPLETION_PROPERTIES,
    answer_path=("text",),
    chunk_path=("text",),
    prompt_count=limits.prompt_count,
    limits=(limits.check_completion_logprobs, limits.check_echo),
)
ROUTES = (CHAT, COMPLETIONS)
