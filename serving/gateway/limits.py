"""Bounds on the work one request may ask for, checked before anything is forwarded.

- the body is read at most `gateway.max_body_bytes` (413 past it, counted while reading);
- `max_tokens` (or `max_completion_tokens`) at most min(gateway.max_tokens_limit,
  engine.max_model_len - 1); a request that names neither gets `gateway.default_max_tokens`;
- chat roles from OpenAI's set;
- choices: a completions `prompt` list times `n` (chat: `n`) at most `gateway.max_choices_per_request`;
- sampling parameters that multiply work: `n` 1..MAX_N, `best_of` refused, `logprobs` /
  `top_logprobs` 0..MAX_LOGPROBS, `prompt_logprobs` refused and so is `echo` with `logprobs` (both
  score every prompt token), `ignore_eos` a boolean (the output stays within max_tokens),
  `min_tokens` 0..max_tokens.

Every refusal is a 400 (413 for the body) naming the parameter and the allowed range.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from serving.config import ServingConfig
from serving.errors import BadRequest, PayloadTooLarge
from serving.gateway.tools import check_tool_fields

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
        check_tool_fields(body)  # serving/gateway/tools.py
    n = _int_in(body, "n", 1, MAX_N) or 1
    check_choices(prompt_count(body["prompt"]) if route == "completions" else 1, n, cfg)
    for field, why in REFUSED.items():
        if body.get(field) is not None:
            raise BadRequest(f"`{field}` is refused: {why}", param=field)
    if route == "chat":
        if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
            raise BadRequest(f"`logprobs` must be true or false, got {body['logprobs']!r}", param="logprobs")
        _int_in(body, "top_logprobs", 0, MAX_LOGPROBS)
    else:
        _int_in(body, "logprobs", 0, MAX_LOGPROBS)
        check_echo(body)
    for flag in ("ignore_eos", "stream"):
        if body.get(flag) is not None and not isinstance(body[flag], bool):
            raise BadRequest(f"`{flag}` must be true or false, got {body[flag]!r}", param=flag)
    options = body.get("stream_options")
    if options is not None and (
        not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool)
    ):
        raise BadRequest(
            f'`stream_options` must be an object like {{"include_usage": true}}, got {options!r}',
            param="stream_options",
        )
    _int_in(body, "min_tokens", 0, max_tokens)


def prompt_count(prompt: Any) -> int:
    """Prompts in a completions `prompt`: a string or a list of token ids is one, a list of
    strings (or of token-id lists) is one per item."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
        if not prompt:
            raise BadRequest("`prompt` is empty: send the text (or token ids) to complete", param="prompt")
        return 1
    return len(prompt)


def check_choices(prompts: int, n: int, cfg: ServingConfig) -> None:
    cap = cfg.gateway.max_choices_per_request
    if prompts * n > cap:
        raise BadRequest(
            f"this request asks for {prompts} prompts x n {n} = {prompts * n} choices, more than "
            f"gateway.max_choices_per_request ({cap}); split it into requests of at most {cap} choices",
            param="prompt" if prompts > 1 else "n",
        )


def check_echo(body: dict[str, Any]) -> None:
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise BadRequest(f"`echo` must be true or false, got {echo!r}", param="echo")
    if echo and body.get("logprobs") is not None:
        raise BadRequest(
            f"`echo` with `logprobs` ({body['logprobs']!r}) is refused: it returns log-probabilities over the "
            "whole prompt (like `prompt_logprobs`); drop one of them",
            param="echo",
        )


def check_roles(messages: list[Any]) -> None:
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object with `role` and `content`", param=f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadRequest(
                f"messages[{i}].role {role!r} is not one of {', '.join(sorted(ROLES))}", param=f"messages[{i}].role"
            )
