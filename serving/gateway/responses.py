"""POST /v1/responses: OpenAI's Responses API, served as a chat call through the chat request path.

    Responses body -> chat body -> routes.handle (resolve, A/B, rollouts, limits, forward, log)
                   <- Responses object / event stream <- the chat answer

Stateless: nothing is stored, so a request that needs stored state (`previous_response_id`,
`conversation`, `store: true`, `background`, a stored `prompt`, an `item_reference`) is a 400 that
says so; send the whole conversation as `input` instead. The response id is the call's id
(`resp_<uuid hex>`, recorder.Call): the request log row (route "responses") and feedback
(`POST /v1/feedback {"id": "resp_..."}`) use it.

Translated: `input` (a string, or message items whose content is a string or `input_text` /
`output_text` parts, plus `function_call` / `function_call_output` items), `instructions` (a
system message first), `max_output_tokens` (-> max_tokens, at most the gateway's cap),
`temperature`, `top_p`, `user` / `safety_identifier` (-> user, the A/B key), `text.format`
(json_schema / json_object -> response_format), function `tools`, `tool_choice`,
`parallel_tool_calls`. Any other input item or content type (images, files, audio, reasoning,
computer or search calls ...) is a 400 naming it. The stream is translated by
serving/gateway/responses_stream.py.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from serving.config import ServingConfig
from serving.errors import BadRequest
from serving.gateway.deps import CallerDep, RequestPathDep
from serving.gateway.limits import token_cap
from serving.gateway.openapi import RESPONSES_BODY, request_body
from serving.gateway.protocol import CHAT
from serving.gateway.responses_stream import (
    ResponsesStream,
    function_call_item,
    message_item,
    response_object,
    usage_of,
)
from serving.gateway.routes import handle

router = APIRouter()

STATEFUL = {
    "previous_response_id": "responses are not stored",
    "conversation": "conversations are not stored",
    "prompt": "stored prompt templates are not kept",
}
IGNORED = ("metadata", "service_tier", "prompt_cache_key", "prompt_cache_retention", "stream_options", "include")
PASSED = ("model", "temperature", "top_p", "stream", "parallel_tool_calls")
KNOWN = {"input", "instructions", "max_output_tokens", "user", "safety_identifier", "text", "tools", "tool_choice"}
KNOWN |= {"store", "background", "truncation", "reasoning", *STATEFUL, *IGNORED, *PASSED}
ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = ("input_text", "output_text")
ITEMS = "message items with input_text content, function_call and function_call_output items"


def _stateless(body: dict) -> None:
    for field, why in STATEFUL.items():
        if body.get(field) is not None:
            raise BadRequest(
                f"`{field}` needs stored state, and this gateway is stateless ({why}): send the whole "
                "conversation as `input` instead",
                param=field,
            )
    if body.get("store") is True:
        raise BadRequest(
            "`store: true` is refused: this gateway does not store responses; send `store: false` or leave it "
            "out (feedback by the response id works without it)",
            param="store",
        )
    if body.get("background") is True:
        raise BadRequest("`background: true` needs stored responses; leave it out", param="background")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise BadRequest(f"`{unknown[0]}` is not served on /v1/responses; leave it out", param=unknown[0])
    for field, allowed in (("truncation", "disabled"), ("reasoning", None)):
        if body.get(field) not in (None, allowed, {}):
            raise BadRequest(f"`{field}` {body[field]!r} is not served; leave it out", param=field)


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, or its input_text / output_text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of input_text parts", param=f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise BadRequest(
                f"{where}.content[{j}] has type {kind!r}, which this gateway does not serve: only text "
                "(input_text parts) reaches the model",
                param=f"{where}.content[{j}]",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _function_call(item: dict, where: str) -> dict:
    fields = [item.get(k) for k in ("call_id", "name", "arguments")]
    if not all(isinstance(v, str) for v in fields):
        raise BadRequest(f"{where}: a function_call item needs string `call_id`, `name` and `arguments`", param=where)
    return {"id": fields[0], "type": "function", "function": {"name": fields[1], "arguments": fields[2]}}


def _add_item(messages: list[dict], item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object: {ITEMS}", param=where)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ROLES:
            raise BadRequest(f"{where}.role {role!r} is not one of {', '.join(ROLES)}", param=f"{where}.role")
        role = "system" if role == "developer" else role  # chat templates know system, not developer
        messages.append({"role": role, "content": _text(item.get("content"), where)})
    elif kind == "function_call":
        call = _function_call(item, where)
        last = messages[-1] if messages else {}
        if last.get("role") == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)  # parallel calls: one assistant turn
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str) or not isinstance(item.get("output"), str):
            raise BadRequest(f"{where}: a function_call_output item needs string `call_id` and `output`", param=where)
        messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    elif kind == "item_reference":
        raise BadRequest(f"{where} is an item_reference: items are not stored here; send the item itself", param=where)
    else:
        raise BadRequest(f"{where} is a {kind!r} item, which this gateway does not serve; send {ITEMS}", param=where)


def chat_messages(body: dict) -> list[dict]:
    messages: list[dict] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise BadRequest("`instructions` must be a string (the system message)", param="instructions")
        messages.append({"role": "system", "content": instructions})
    value = body.get("input")
    if isinstance(value, str) and value:
        messages.append({"role": "user", "content": value})
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            _add_item(messages, item, f"input[{i}]")
    else:
        raise BadRequest("`input` is required: a string or a non-empty list of input items", param="input")
    return messages


def _response_format(text: Any) -> dict | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if text is not None and not isinstance(text, dict):
        raise BadRequest('`text` must be an object like {"format": {"type": "json_schema", ...}}', param="text")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise BadRequest(
        f"`text.format` {fmt!r:.120} is not served: use type text, json_object or json_schema with a `schema`",
        param="text.format",
    )


def _tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise BadRequest("`tools` must be a list of function tools", param="tools")
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function" or not isinstance(tool.get("name"), str):
            raise BadRequest(
                f"tools[{i}] has type {kind!r}: only function tools with a `name` are served", param=f"tools[{i}]"
            )
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if choice in ("auto", "none", "required"):
        return choice
    raise BadRequest(
        f'`tool_choice` {choice!r:.80} is not served: use auto, none, required or {{"type": "function", "name": ...}}',
        param="tool_choice",
    )


def chat_body(body: dict, cap: int) -> dict:
    """The chat request for a Responses request (cap: the gateway's max_tokens cap)."""
    _stateless(body)
    chat: dict[str, Any] = {k: body[k] for k in PASSED if body.get(k) is not None}
    chat["messages"] = chat_messages(body)
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= cap:
            raise BadRequest(
                f"`max_output_tokens` must be an integer in 1..{cap} (min of gateway.max_tokens_limit and "
                f"engine.max_model_len - 1), got {limit!r}",
                param="max_output_tokens",
            )
        chat["max_tokens"] = limit
    user = body.get("safety_identifier") or body.get("user")
    if user is not None:
        chat["user"] = user
    if (response_format := _response_format(body.get("text"))) is not None:
        chat["response_format"] = response_format
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True}  # response.completed carries the usage
    return chat


def _output(message: dict, rid: str, status: str) -> list[dict]:
    """The output items of one chat answer: its text as a message item, then one item per tool call."""
    items = []
    text = message.get("content")
    calls = message.get("tool_calls") or []
    if text or not calls:
        items.append(message_item(rid, str(text or ""), status))
    for call in calls:
        function = call.get("function") or {}
        items.append(function_call_item(call.get("id") or "", function.get("name"), function.get("arguments")))
    return items


class ResponsesTranslation:
    """routes.Translation for one request: the Responses body to chat and the chat answer back."""

    def __init__(self, cfg: ServingConfig):
        self.cfg = cfg
        self.body: dict = {}
        self.created_at = time.time()

    def request(self, body: dict) -> dict:
        self.body = body
        return chat_body(body, token_cap(self.cfg))

    def response(self, response: Response) -> Response:
        if response.status_code != 200:
            return response  # an error: OpenAI's error body, the same on both APIs
        if isinstance(response, StreamingResponse):
            response.body_iterator = ResponsesStream(self.body, self.created_at).translate(response.body_iterator)
            return response
        payload = json.loads(bytes(response.body))
        choice = (payload.get("choices") or [{}])[0]
        finish = choice.get("finish_reason")
        status = "incomplete" if finish == "length" else "completed"
        rid = str(payload.get("id"))
        output = _output(choice.get("message") or {}, rid, status)
        answer = response_object(
            self.body, rid, payload.get("model"), self.created_at, status, output, usage_of(payload.get("usage"))
        )
        response.body = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
        response.headers["content-length"] = str(len(response.body))
        return response


# A chat call upstream: the chat spec's checks, limits and answer reading apply to the translated body.
RESPONSES = dataclasses.replace(CHAT, name="responses", path="/v1/responses", id_prefix="resp_")


@router.post("/v1/responses", openapi_extra=request_body(RESPONSES_BODY))
async def responses(request: Request, path: RequestPathDep, principal: CallerDep) -> Response:
    """OpenAI's Responses API (stateless), served as a chat call: model resolution, A/B, rollouts,
    limits, the request log (route "responses") and feedback by the returned `resp_...` id."""
    return await handle(request, RESPONSES, path, principal, ResponsesTranslation(path.cfg))
