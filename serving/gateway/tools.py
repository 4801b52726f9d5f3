"""Chat requests with tools: `tools`, `tool_choice` and `parallel_tool_calls` are checked, then
passed to the engine unchanged (the engine's tool-call parser turns the answer into
`message.tool_calls`; docs/tools.md).

- `tools`: a non-empty list of {"type": "function", "function": {"name", "parameters"?}}, names unique;
- `tool_choice`: "none" | "auto" | "required" | {"type": "function", "function": {"name"}} naming
  one of `tools` (and only with `tools`);
- `parallel_tool_calls`: true or false.

Every refusal is a 400 naming the field (`param`) and what to send instead.
"""

from __future__ import annotations

from typing import Any

from serving.errors import BadRequest

TOOL_SHAPE = '{"type": "function", "function": {"name": ..., "parameters": {...}}}'
CHOICE_WORDS = ("none", "auto", "required")


def check_tool_fields(body: dict[str, Any]) -> None:
    """Check a chat body's tool fields in place (nothing is rewritten)."""
    names = _tool_names(body["tools"]) if body.get("tools") is not None else None
    if body.get("tool_choice") is not None:
        _check_choice(body["tool_choice"], names)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise BadRequest(f"`parallel_tool_calls` must be true or false, got {parallel!r}", param="parallel_tool_calls")


def _tool_names(tools: Any) -> list[str]:
    if not isinstance(tools, list) or not tools:
        raise BadRequest(
            f"`tools` must be a non-empty list of function objects {TOOL_SHAPE}, got {tools!r:.80}", param="tools"
        )
    names = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise BadRequest(
                f"tools[{i}] must be a function object {TOOL_SHAPE}, got {tool!r:.80}", param=f"tools[{i}]"
            )
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise BadRequest(
                f"tools[{i}].function has no `name`; every function needs one", param=f"tools[{i}].function.name"
            )
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise BadRequest(
                f"tools[{i}].function.parameters must be a JSON schema object, got {fn['parameters']!r:.80}",
                param=f"tools[{i}].function.parameters",
            )
        if name in names:
            raise BadRequest(
                f"`tools` declares {name!r} twice; names must be unique", param=f"tools[{i}].function.name"
            )
        names.append(name)
    return names


def _check_choice(choice: Any, names: list[str] | None) -> None:
    if choice in CHOICE_WORDS and (choice == "none" or names is not None):
        return
    if names is None:
        raise BadRequest(f"`tool_choice` {choice!r} needs `tools`: send the functions it may call", param="tool_choice")
    fn = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if not isinstance(fn, dict):
        raise BadRequest(
            f"`tool_choice` must be one of {', '.join(CHOICE_WORDS)} or "
            f'{{"type": "function", "function": {{"name": ...}}}}, got {choice!r:.80}',
            param="tool_choice",
        )
    if fn.get("name") not in names:
        raise BadRequest(
            f"`tool_choice` names function {fn.get('name')!r}, which is not in `tools` ({', '.join(names)})",
            param="tool_choice.function.name",
        )
