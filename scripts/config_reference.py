"""docs/configuration.md: every key of the trainer's and the serving config, generated from the
config classes (trainer/config.py dataclasses, serving/config.py pydantic models).

A key's description is the comment on its line or the comment lines right above it in the class;
tests/test_docs.py fails when a key has none or when docs/configuration.md is stale.

    python scripts/config_reference.py          # print the page
    python scripts/config_reference.py --write  # write docs/configuration.md
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "configuration.md"
FIELD = re.compile(r"^\s+([a-z_][a-z0-9_]*)\s*:\s*[^=]+?(?:=.*?)?(?:#\s*(.*))?$")


def field_comments(cls: type) -> dict[str, str]:
    """field name -> its inline comment, or the comment block above it."""
    out: dict[str, str] = {}
    block: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        match = FIELD.match(line)
        if match and not stripped.startswith(("def ", "@", "return")):
            inline = match.group(2)
            text = " ".join([*block, inline] if inline else block).strip()
            if text:
                out[match.group(1)] = text
        block = []
    return out


def _type_name(hint: Any) -> str:
    return re.sub(r"typing\.|<class '|'>", "", str(hint)).replace("NoneType", "None")


def trainer_rows(cls: type | None = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    from trainer.config import Config

    cls = cls or Config
    hints, notes = typing.get_type_hints(cls), field_comments(cls)
    rows = []
    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            rows += trainer_rows(type(value), f"{prefix}{f.name}.")
            continue
        rows.append((f"{prefix}{f.name}", _type_name(hints[f.name]), json.dumps(value), notes.get(f.name, "")))
    return rows


def serving_rows(cls: Any = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    from pydantic import BaseModel

    from serving.config import ServingConfig

    cls = cls or ServingConfig
    notes, rows = field_comments(cls), []
    for name, info in cls.model_fields.items():
        hint = info.annotation
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            rows += serving_rows(hint, f"{prefix}{name}.")
            continue
        default = info.get_default(call_default_factory=True)
        shown = json.dumps(default, default=str)
        rows.append((f"{prefix}{name}", _type_name(hint), shown, notes.get(name, info.description or "")))
    return rows


def undocumented() -> list[str]:
    return [f"trainer {r[0]}" for r in trainer_rows() if not r[3]] + [
        f"serving {r[0]}" for r in serving_rows() if not r[3]
    ]


def table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, kind, default, note in rows:
        cells = [f"`{key}`", f"`{kind}`", f"`{default}`", note or "**undocumented**"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("<", "&lt;") for c in cells) + " |")
    return lines


def page() -> str:
    return "\n".join(
        [
            "# Configuration reference",
            "",
            "Generated from the config classes by `python scripts/config_reference.py --write`. Defaults",
            "live only there; YAML files and `--dotted.key value` flags override them.",
            "",
            "## Trainer (`loraplane train`, trainer/config.py)",
            "",
            *table(trainer_rows()),
            "",
            "## Serving (`loraplane serve`, serving/config.py)",
            "",
            *table(serving_rows()),
            "",
        ]
    )


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if "--write" in sys.argv[1:]:
        PAGE.write_text(page())
    else:
        missing = undocumented()
        print("\n".join(missing) or "every key documented")
