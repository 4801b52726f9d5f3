"""docs/cli.md: every `loraplane` command's --help, generated from the parsers themselves.

    python scripts/cli_reference.py          # print the page
    python scripts/cli_reference.py --write  # write docs/cli.md

tests/test_docs.py fails when docs/cli.md differs from this output (a flag added without
regenerating the page). Help is rendered 100 columns wide so the page does not depend on a terminal.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "cli.md"
ACTIONS = re.compile(r"\{([a-z][a-z,-]*)\} \.\.\.")


def help_text(entry: str, argv: list[str]) -> str:
    """What `loraplane ... --help` prints, in-process (argparse exits 0 after printing)."""
    module_name, func_name = entry.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        func([*argv, "--help"])
    return out.getvalue().rstrip()


def page() -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return _page()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def _page() -> str:
    from loraplane.cli import SUBCOMMANDS

    parts = [
        "# CLI reference",
        "",
        "Generated from the parsers by `python scripts/cli_reference.py --write`; options such as",
        "`--url`, `--config` and `--models-dir` go before or after an action.",
    ]
    for name, (entry, summary) in SUBCOMMANDS.items():
        text = help_text(entry, [])
        parts += ["", f"## loraplane {name}", "", summary, "", "```text", text, "```"]
        usage = text.split("\n\n", 1)[0]
        match = ACTIONS.search(usage)
        for action in match.group(1).split(",") if match else []:
            parts += ["", f"### loraplane {name} {action}", "", "```text", help_text(entry, [action]), "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if "--write" in sys.argv[1:]:
        PAGE.write_text(page())
    else:
        sys.stdout.write(page())
