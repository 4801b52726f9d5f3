"""Send one planned request, read its server-sent event stream, and time it.

Plain httpx, no Locust: under Locust's gevent patching the same code runs cooperatively.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from loadtest.samples import RequestSample
from loadtest.scenarios import PlannedRequest

VARIANT_HEADER = "X-Loraplane-Variant"  # set by the gateway for experiments, e.g. support-bot@v2
ADAPTER_HEADER = "X-Loraplane-Adapter"  # the adapter (or base model) that served the request
ENDPOINT_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def group_label(sample: RequestSample, split_prompt_kinds: bool) -> str:
    label = sample.variant or sample.adapter or sample.model
    return f"{label} ({sample.prompt_kind})" if split_prompt_kinds else label


def stream_request(
    client: httpx.Client, path: str, planned: PlannedRequest, t0: float, split_prompt_kinds: bool = False
) -> RequestSample:
    """POST the planned body, stream the answer; every failure ends up in `sample.error`."""
    sample = RequestSample(
        index=planned.index,
        group=planned.model,
        model=planned.model,
        user_key=planned.user_key,
        prompt_kind=planned.prompt_kind,
        scheduled_s=planned.at_s,
        start_s=0.0,
    )
    sent = time.perf_counter()
    sample.start_s = sent - t0
    try:
        with client.stream("POST", path, json=planned.body) as response:
            sample.status = response.status_code
            sample.variant = response.headers.get(VARIANT_HEADER) or None
            sample.adapter = response.headers.get(ADAPTER_HEADER) or None
            if response.status_code >= 400:
                sample.error = f"HTTP {response.status_code}: {_error_message(response)}"
            elif not _read_events(response, sample, sent):
                sample.error = "stream ended before `data: [DONE]`"
    except httpx.HTTPError as exc:
        sample.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
    except ValueError as exc:  # a `data:` line that is not JSON
        sample.error = f"malformed stream event: {exc}"
    finally:
        sample.e2e_s = time.perf_counter() - sent
        sample.group = group_label(sample, split_prompt_kinds)
    return sample


def _read_events(response: httpx.Response, sample: RequestSample, sent: float) -> bool:
    """Consume `data:` lines; True once `[DONE]` arrives (or an error event ends the stream)."""
    last: float | None = None
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return True
        event: dict[str, Any] = json.loads(data)
        if "error" in event:
            error = event["error"]
            sample.error = f"error event: {error.get('message', error) if isinstance(error, dict) else error}"
            return True
        if _has_content(event):
            now = time.perf_counter()
            if last is None:
                sample.ttft_s = now - sent
            else:
                sample.gaps_s.append(now - last)
            last = now
            sample.content_chunks += 1
        if usage := event.get("usage"):
            sample.output_tokens = usage.get("completion_tokens")
            sample.prompt_tokens = usage.get("prompt_tokens")
    return False


def _has_content(event: dict[str, Any]) -> bool:
    for choice in event.get("choices") or []:
        if (choice.get("delta") or {}).get("content") or choice.get("text"):
            return True
    return False


def _error_message(response: httpx.Response) -> str:
    response.read()
    try:
        body = response.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("detail", body)
    except (ValueError, KeyError, TypeError, AttributeError):
        message = response.text
    return str(message)[:300]
