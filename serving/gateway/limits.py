"""Bounds on the work one request may ask for, checked before anything is forwarded.

- the body is read at most `gateway.max_body_bytes` (413 past it, counted while reading);
- `max_tokens` (or `max_completion_tokens`) at most min(gateway.max_tokens_limit,
  engine.max_model_len - 1); a request that names neither gets `gateway.default_max_tokens`;
- chat roles from OpenAI's set;
- sampling parameters that multiply work: `n` 1..MAX_N, `best_of` refused, `logprobs` /
  `top_logprobs` 0..MAX_LOGPROBS, `prompt_logprobs` refused, `ignore_eos` a boolean (the output
  stays within max_tokens), `min_tokens` 0..max_tokens.

Every refusal is a 400 (413 for the body) naming the parameter and the allowed range.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from serving.config import ServingConfig
from serving.errors import BadRequest, PayloadTooLarge

ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
MAX_N = 4
MAX_LOGPROBS = 5
REFUSED = {
    "best_of": "vLLM's V1 engine does not serve it; send n instead",
    "prompt_logprobs": "it returns log-probabilities over the whole prompt; not served through the gateway",
}


async def read_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The JSON body, never reading more than `max_bytes` (Content-Length is checked first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"")
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _too_large(size: int, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body is larger than {max_bytes} bytes (got at least {size}); "
        "send less, or raise gateway.max_body_bytes",
        code="request_too_large",
    )


def _int_in(body: dict[str, Any], field: str, low: int, high: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"`{field}` must be an integer in {low}..{high}, got {value!r}", param=field)
    return value


def token_cap(cfg: ServingConfig) -> int:
    return min(cfg.gateway.max_tokens_limit, cfg.engine.max_model_len - 1)


def apply_limits(body: dict[str, Any], route: str, cfg: ServingConfig) -> None:
    """Check `body` in place against the bounds above; fill in the default max_tokens."""
    cap = token_cap(cfg)
    asked = [_int_in(body, field, 1, cap) for field in ("max_tokens", "max_completion_tokens")]
    if asked == [None, None]:
        body["max_tokens"] = cfg.gateway.default_max_tokens
    max_tokens = min(v for v in [*asked, body.get("max_tokens")] if isinstance(v, int))
    if route == "chat":
        check_roles(body["messages"])
    _int_in(body, "n", 1, MAX_N)
    for field, why in REFUSED.items():
        if body.get(field) is not None:
            raise BadRequest(f"`{field}` is refused: {why}", param=field)
    if route == "chat":
        if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
            raise BadRequest(f"`logprobs` must be true or false, got {body['logprobs']!r}", param="logprobs")
        _int_in(body, "top_logprobs", 0, MAX_LOGPROBS)
    else:
        _int_in(body, "logprobs", 0, MAX_LOGPROBS)
    if body.get("ignore_eos") is not None and not isinstance(body["ignore_eos"], bool):
        raise BadRequest(f"`ignore_eos` must be true or false, got {body['ignore_eos']!r}", param="ignore_eos")
    _int_in(body, "min_tokens", 0, max_tokens)


def check_roles(messages: list[Any]) -> None:
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object with `role` and `content`", param=f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(
                f"messages[{i}].role {role!r} is not one of {', '.join(sorted(ROLES))}", param=f"messages[{i}].role"
            )
