"""Request-body schemas for the OpenAPI document (/openapi.json) of the proxied OpenAI routes.

The routes read their bodies themselves (serving/gateway/limits.py: bounded read, then the
checks), so FastAPI cannot derive these; they document what the gateway accepts and give the
fuzz test (tests/serving/test_gateway_fuzz.py, schemathesis) something to generate from.
Each route's spec (serving/gateway/protocol.py) names its own properties and required field;
`object_schema` puts them together with the fields every route shares.
"""

from __future__ import annotations

from typing import Any

from serving.gateway.limits import MAX_LOGPROBS, MAX_N, ROLES

COMMON: dict[str, Any] = {
    "model": {"type": "string", "description": "base model, adapter, adapter@vN or experiment name"},
    "max_tokens": {"type": "integer", "minimum": 1, "description": "default gateway.default_max_tokens"},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "n": {"type": "integer", "minimum": 1, "maximum": MAX_N},
    "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "seed": {"type": "integer"},
    "user": {"type": "string", "description": "end-user id: the A/B key (gateway.ab_key_sources)"},
    "ignore_eos": {"type": "boolean"},
    "min_tokens": {"type": "integer", "minimum": 0},
}
CHAT_PROPERTIES: dict[str, Any] = {
    "messages": {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {"role": {"type": "string", "enum": sorted(ROLES)}, "content": {"type": "string"}},
        },
    },
    "max_completion_tokens": {"type": "integer", "minimum": 1},
    "logprobs": {"type": "boolean"},
    "top_logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_LOGPROBS},
}
COMPLETION_PROPERTIES: dict[str, Any] = {
    "prompt": {
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        "description": "prompts x n at most gateway.max_choices_per_request (default 64)",
    },
    "logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_LOGPROBS},
    "echo": {"type": "boolean", "description": "refused together with logprobs (prompt log-probabilities)"},
}

RESPONSES_BODY: dict[str, Any] = {  # serving/gateway/responses.py: stateless, text and function tools only
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": COMMON["model"],
        "input": {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "type": {"type": "string", "enum": ["message"]},
                            "role": {"type": "string", "enum": ["user", "system", "developer", "assistant"]},
                            "content": {"type": "string"},
                        },
                    },
                    "description": "message items (string or input_text content), function_call and "
                    "function_call_output items",
                },
            ]
        },
        "instructions": {"type": "string", "description": "the system message"},
        "max_output_tokens": {"type": "integer", "minimum": 1, "description": "default gateway.default_max_tokens"},
        "stream": COMMON["stream"],
        "temperature": COMMON["temperature"],
        "top_p": COMMON["top_p"],
        "user": COMMON["user"],
        "store": {"type": "boolean", "enum": [False], "description": "stateless: true is refused"},
    },
}


def object_schema(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """A JSON body with the shared fields plus a route's own (which win over a shared one)."""
    return {"type": "object", "required": required, "properties": {**COMMON, **properties}}


def request_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
