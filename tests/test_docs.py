"""The docs: the mkdocs site builds with --strict (a broken link or a page left out of nav fails),
and every `loraplane base|adapters|rollout ...` command the README and the docs show parses."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "helm/loraplane/README.md"]
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+ )*loraplane (base|adapters|rollout) (.+?)(?:\s+#.*)?$")


def shown_commands() -> list[tuple[str, str, list[str]]]:
    """(page, subcommand, argv) for each command line inside a ```bash block, continuations joined."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                match = COMMAND.match(line.strip())
                argv = shlex.split(match.group(2)) if match else []
                if match and not any(t.startswith("[") or "|" in t for t in argv):  # not a usage synopsis
                    found.append((page.name, match.group(1), argv))
    return found


def parse(subcommand: str, argv: list[str]) -> object:
    if subcommand == "base":
        from trainer.base_models import parse_args

        return parse_args(argv)
    if subcommand == "adapters":
        from serving.cli import adapters_parser

        return adapters_parser().parse_args(argv)
    from serving.rollouts.cli import parser

    return parser().parse_args(argv)


def test_the_docs_show_base_add_and_url_after_the_action() -> None:
    commands = shown_commands()
    assert any(sub == "base" and argv[0] == "add" for _, sub, argv in commands)
    assert any(sub == "rollout" and "--url" in argv[1:] for _, sub, argv in commands)


@pytest.mark.parametrize(("page", "subcommand", "argv"), shown_commands(), ids=lambda v: str(v)[:40])
def test_every_shown_command_parses(page: str, subcommand: str, argv: list[str]) -> None:
    try:
        parse(subcommand, argv)
    except SystemExit as exc:
        pytest.fail(f"{page}: `loraplane {subcommand} {shlex.join(argv)}` does not parse (exit {exc.code})")


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the dev extra installs mkdocs")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "own-base" / "index.html").is_file()


def _script(name: str):  # noqa: ANN202
    sys.path.insert(0, str(REPO / "scripts"))
    return __import__(name)


def test_cli_reference_is_generated_from_the_parsers() -> None:
    page = (REPO / "docs" / "cli.md").read_text()
    assert page == _script("cli_reference").page(), "regenerate: python scripts/cli_reference.py --write"
    assert "### loraplane base add" in page and "--link" in page


def test_every_config_key_has_a_description_and_the_reference_is_current() -> None:
    reference = _script("config_reference")
    assert reference.undocumented() == [], "add a comment on (or above) these fields in their config class"
    page = (REPO / "docs" / "configuration.md").read_text()
    assert page == reference.page(), "regenerate: python scripts/config_reference.py --write"


def test_http_api_reference_is_the_gateways_openapi_schema() -> None:
    import json

    reference = _script("api_reference")
    spec = reference.openapi()
    assert json.loads((REPO / "docs" / "openapi.json").read_text()) == json.loads(json.dumps(spec)), (
        "regenerate: python scripts/api_reference.py --write"
    )
    page = (REPO / "docs" / "api.md").read_text()
    assert page == reference.page(spec) and "| POST | `/v1/chat/completions` |" in page
