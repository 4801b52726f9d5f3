"""OpenAI fine-tuning rows with tools: validate and normalise `tools`, `tool_calls` and `tool` turns.

A row is {"messages": [...], "tools": [{"type": "function", "function": {"name", "description"?,
"parameters"?}}], "parallel_tool_calls"?: bool}. Assistant messages may carry `tool_calls`
([{"id"?, "type": "function", "function": {"name", "arguments"}}], arguments a JSON object or a
string holding one); `tool` messages carry the results. Every problem is a ValueError naming the
field (trainer/data.py adds file:line). Arguments come out as dicts: chat templates (ours and
vLLM's rendering of a request) read them as mappings.
"""

from __future__ import annotations

import json
from typing import Any

TOOL_SHAPE = '{"type": "function", "function": {"name": ..., "parameters": {...}}}'


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """The row's `tools` list, each entry a function object with a name."""
    if not isinstance(tools, list):
        raise ValueError(f"field 'tools' must be a list of {TOOL_SHAPE}, got {type(tools).__name__}")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ValueError(f"tools[{i}] must be a function object {TOOL_SHAPE}, got {tool!r:.80}")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise ValueError(f"tools[{i}].function must be an object {TOOL_SHAPE}, got {fn!r:.80}")
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"tools[{i}].function.name is missing or empty; every function needs a name")
        params = fn.get("parameters", {})
        if not isinstance(params, dict):
            raise ValueError(f"tools[{i}].function.parameters must be a JSON schema object, got {params!r:.80}")
        out.append({"type": "function", "function": fn})
    names = [t["function"]["name"] for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"field 'tools' declares {', '.join(dupes)} more than once")
    return out


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}.function.arguments is not valid JSON ({exc.msg}): {raw!r:.80}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{where}.function.arguments must be a JSON object (or a string holding one), got {raw!r:.80}")
    return raw


def check_tool_calls(calls: Any, declared: set[str], where: str) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls`, each naming a function the row's `tools` declares."""
    if not isinstance(calls, list) or not calls:
        raise ValueError(f"{where}.tool_calls must be a non-empty list of function calls")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise ValueError(
                f"{at} must be {{'type': 'function', 'function': {{'name', 'arguments'}}}}, got {call!r:.80}"
            )
        name = fn.get("name")
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none: the row has no 'tools'"
            raise ValueError(f"{at}.function.name {name!r} is not a function in the row's 'tools' ({known})")
        entry = {"type": "function", "function": {"name": name, "arguments": _arguments(fn.get("arguments"), at)}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def check_tool_turns(messages: list[dict[str, Any]], parallel: Any) -> None:
    """`tool` results answer an earlier call; one call per turn when parallel_tool_calls is false."""
    if parallel is not None and not isinstance(parallel, bool):
        raise ValueError(f"field 'parallel_tool_calls' must be true or false, got {parallel!r}")
    called = False
    for i, msg in enumerate(messages):
        calls = msg.get("tool_calls") or []
        if parallel is False and len(calls) > 1:
            raise ValueError(f"messages[{i}].tool_calls has {len(calls)} calls but 'parallel_tool_calls' is false")
        called = called or bool(calls)
        if msg["role"] == "tool" and not called:
            raise ValueError(f"messages[{i}] is a tool result but no earlier assistant message has tool_calls")
