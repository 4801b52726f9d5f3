"""The Responses API's objects and its event stream, built from a chat answer (gateway/responses.py).

A streamed Responses request is a streamed chat call: the relay (gateway/stream.py) records it as
for chat (TTFT, tokens, the request log) and `ResponsesStream.translate` turns its chat chunks
into the events the `openai` SDK parses, in OpenAI's order:

    response.created, response.in_progress
    response.output_item.added (message), response.content_part.added (output_text)
    response.output_text.delta ...                                  (as the text arrives)
    response.output_text.done, response.content_part.done, response.output_item.done
    response.output_item.added / function_call_arguments.delta / .done / output_item.done
                                                                    (one per tool call, at the end)
    response.completed (or response.incomplete when max_output_tokens cut the answer)

A failure after the first event is relayed as the gateway's error event (`{"error": {...}}`,
which the SDK raises as an APIError), with no completed event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any


def usage_of(usage: dict | None) -> dict | None:
    """A chat `usage` in the Responses shape."""
    if not usage:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }


def _hex(rid: str) -> str:
    return rid.removeprefix("resp_")


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(rid: str, text: str | None, status: str) -> dict:
    """The assistant message output item of response `rid` (no content part while text is None)."""
    content = [] if text is None else [text_part(text)]
    return {"type": "message", "id": f"msg_{_hex(rid)}", "role": "assistant", "status": status, "content": content}


def function_call_item(call_id: str, name: Any, arguments: Any, status: str = "completed") -> dict:
    return {
        "type": "function_call",
        "id": f"fc_{call_id}",
        "call_id": call_id,
        "name": str(name or ""),
        "arguments": str(arguments or ""),
        "status": status,
    }


def response_object(
    request: dict, rid: str, model: Any, created_at: float, status: str, output: list, usage: dict | None
) -> dict:
    """The Responses object for `request` (the client's body), echoing its settings like OpenAI's."""
    return {
        "id": rid,
        "object": "response",
        "created_at": int(created_at),
        "status": status,
        "model": model,
        "output": output,
        "usage": usage,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "temperature": request.get("temperature"),
        "top_p": request.get("top_p"),
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "text": request.get("text") or {"format": {"type": "text"}},
        "metadata": request.get("metadata") or {},
        "user": request.get("user"),
        "store": False,  # stateless: nothing to retrieve later
        "background": False,
        "previous_response_id": None,
    }


class ResponsesStream:
    """Turns one chat stream into Responses events; the state of one streamed response."""

    def __init__(self, request: dict, created_at: float):
        self.request, self.created_at = request, created_at
        self.sequence = 0
        self.rid, self.model = "", None
        self.text: list[str] = []
        self.message_open = False
        self.calls: dict[int, dict] = {}  # the chat tool call's index -> {id, name, arguments}
        self.finish: str | None = None
        self.usage: dict | None = None
        self.failed = False

    async def translate(self, chat_events: AsyncIterable[Any]) -> AsyncIterator[str]:
        """The client's events for the relay's chat events (read to their end: the relay logs there)."""
        async for piece in chat_events:
            text = piece if isinstance(piece, str) else bytes(piece).decode()
            for block in text.split("\n\n"):
                if not block.startswith("data: "):
                    continue
                out = self._on_data(block[6:])
                if out:
                    yield out

    def _on_data(self, data: str) -> str:
        if data == "[DONE]":
            return "" if self.failed else self._finish()
        chunk = json.loads(data)
        if chunk.get("error") and not chunk.get("choices"):  # the gateway's error event: relayed as is
            self.failed = True
            return f"data: {data}\n\n"
        return self._on_chunk(chunk)

    def _event(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n"

    def _snapshot(self, status: str, output: list, usage: dict | None = None) -> dict:
        return response_object(self.request, self.rid, self.model, self.created_at, status, output, usage)

    def _on_chunk(self, chunk: dict) -> str:
        out = []
        if not self.rid:  # the first chunk: the relay put the call's id (resp_...) on every chunk
            self.rid, self.model = str(chunk.get("id")), chunk.get("model")
            out.append(self._event("response.created", response=self._snapshot("in_progress", [])))
            out.append(self._event("response.in_progress", response=self._snapshot("in_progress", [])))
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._open_message()
                self.text.append(delta["content"])
                out.append(self._text_event("response.output_text.delta", delta=delta["content"]))
            for call in delta.get("tool_calls") or []:
                self._add_call(call)
            self.finish = choice.get("finish_reason") or self.finish
        return "".join(out)

    def _text_event(self, kind: str, **fields: Any) -> str:
        return self._event(kind, item_id=f"msg_{_hex(self.rid)}", output_index=0, content_index=0, **fields)

    def _open_message(self) -> list[str]:
        if self.message_open:
            return []
        self.message_open = True
        item = message_item(self.rid, None, "in_progress")
        return [
            self._event("response.output_item.added", output_index=0, item=item),
            self._text_event("response.content_part.added", part=text_part("")),
        ]

    def _add_call(self, call: dict) -> None:
        entry = self.calls.setdefault(call.get("index", len(self.calls)), {"id": "", "name": "", "arguments": ""})
        function = call.get("function") or {}
        entry["id"] = call.get("id") or entry["id"]
        entry["name"] += function.get("name") or ""
        entry["arguments"] += function.get("arguments") or ""

    def _finish(self) -> str:
        status = "incomplete" if self.finish == "length" else "completed"
        out, output = [], []
        if self.text or not self.calls:
            out += self._open_message()
            text = "".join(self.text)
            item = message_item(self.rid, text, status)
            out.append(self._text_event("response.output_text.done", text=text, logprobs=[]))
            out.append(self._text_event("response.content_part.done", part=text_part(text)))
            out.append(self._event("response.output_item.done", output_index=0, item=item))
            output.append(item)
        for index in sorted(self.calls):
            call = self.calls[index]
            item = function_call_item(call["id"], call["name"], call["arguments"])
            out += self._call_events(len(output), item)
            output.append(item)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        out.append(self._event(kind, response=self._snapshot(status, output, usage_of(self.usage))))
        return "".join(out)

    def _call_events(self, index: int, item: dict) -> list[str]:
        item_id, arguments = item["id"], item["arguments"]
        added = {**item, "arguments": "", "status": "in_progress"}
        return [
            self._event("response.output_item.added", output_index=index, item=added),
            self._event("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=arguments),
            self._event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                name=item["name"],
                arguments=arguments,
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]
