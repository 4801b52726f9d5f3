"""The values table of helm/loraplane/README.md, generated from values.schema.json and values.yaml.

Every key the schema knows is a row: its type (schema), its default (values.yaml) and its description
(the comment above the key in values.yaml). tests/helm/test_chart_readme.py fails when a key has no
comment or when the README's table differs from this output.

    python scripts/chart_values_doc.py          # print the table
    python scripts/chart_values_doc.py --write  # replace the table in helm/loraplane/README.md
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "helm" / "loraplane"
BEGIN, END = "<!-- values-table:begin -->", "<!-- values-table:end -->"
KEY_LINE = re.compile(r"^(\s*)([A-Za-z0-9_]+):")


def comments(values_text: str) -> dict[str, str]:
    """dotted key -> the comment block right above it in values.yaml (joined into one line)."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        match = KEY_LINE.match(line)
        if match and not stripped.startswith("-"):
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            if block:
                out[".".join(k for _, k in stack)] = " ".join(block)
        block = []
    return out


def leaves(schema: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every key of the schema, sections and values alike, depth first."""
    rows = []
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        rows.append((path, sub))
        if sub.get("type") == "object" and "properties" in sub:
            rows += leaves(sub, f"{path}.")
    return rows


def default(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def type_name(sub: dict[str, Any]) -> str:
    kind = sub.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    if "enum" in sub:
        choices = [json.dumps(v) for v in sub["enum"] if v is not None] + (["null"] if "null" in kinds else [])
        return " \\| ".join(choices)
    return " \\| ".join(kinds)


def undocumented() -> list[str]:
    schema = json.loads((CHART / "values.schema.json").read_text())
    notes = comments((CHART / "values.yaml").read_text())
    return [path for path, _ in leaves(schema) if path not in notes]


def table() -> str:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values_text = (CHART / "values.yaml").read_text()
    values, notes = yaml.safe_load(values_text), comments(values_text)
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for path, sub in leaves(schema):
        section = sub.get("type") == "object" and "properties" in sub
        shown = "" if section else f"`{json.dumps(default(values, path))}`"
        note = notes.get(path, "**undocumented**").replace("|", "\\|").replace("<", "&lt;")
        lines.append(f"| `{path}` | {'section' if section else type_name(sub)} | {shown} | {note} |")
    return "\n".join(lines)


def write(readme: Path = CHART / "README.md") -> None:
    text = readme.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{BEGIN}\n{table()}\n{END}{tail}")


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write()
    else:
        print(table())
