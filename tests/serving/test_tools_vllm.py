"""Tool calling end to end: the shipped recipe (configs/train/tools.yaml) trains an adapter, it is
published, a real vLLM engine serves it with the pythonic parser and the template it was trained
with, and the `openai` client reads `message.tool_calls` through the gateway on the held-out
prompts of data/tools/: right function and arguments in >= 90% for the adapter, far fewer for the
base; a streamed call arrives as tool-call deltas. With LORAPLANE_TOOLS_REPORT=FILE the numbers are
written there (benchmarks/tools_accuracy.py's report; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.tools_accuracy import expected_call, heldout_rows, score, write_report
from tests.conftest import BASE_NAME, REPO, GatewayThread, free_port

pytestmark = pytest.mark.slow

RECIPE = REPO / "configs" / "train" / "tools.yaml"
TEMPLATE = REPO / "configs" / "templates" / "tool-pythonic.jinja"
ADAPTER = "tools"


@pytest.fixture(scope="module")
def tool_adapters(tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> Path:
    """A registry holding tools@vN trained by the recipe. LORAPLANE_TOOLS_ADAPTERS=DIR reuses one
    that `loraplane train --config configs/train/tools.yaml` already published there."""
    if reuse := os.environ.get("LORAPLANE_TOOLS_ADAPTERS"):
        return Path(reuse)
    root = tmp_path_factory.mktemp("tools")
    cmd = [
        sys.executable,
        "-m",
        "loraplane",
        "train",
        "--config",
        str(RECIPE),
        "--out_dir",
        str(root / "run"),
        "--publish.adapters_dir",
        str(root / "adapters"),
    ]
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return root / "adapters"


@pytest.fixture(scope="module")
def adapter(tool_adapters: Path) -> str:
    """`tools@vN`, the newest published version (pinned, so no rollout state is needed)."""
    versions = sorted(
        (p.name for p in (tool_adapters / ADAPTER).iterdir() if p.name.startswith("v")), key=lambda v: int(v[1:])
    )
    return f"{ADAPTER}@{versions[-1]}"


@pytest.fixture(scope="module")
def tool_gateway(tool_adapters: Path, base_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from serving.config import load_config
    from serving.engines.process import EngineProcess
    from serving.gateway.app import create_app

    cfg = load_config(
        None,
        {
            "registry.models_dir": str(REPO / "models"),
            "registry.adapters_dir": str(tool_adapters),
            "engine.port": free_port(),
            "engine.tool_call_parser": "pythonic",
            "engine.chat_template": str(TEMPLATE),
            "gateway.port": free_port(),
        },
    )
    proc = EngineProcess(cfg, base_dir, BASE_NAME, 0, tmp_path_factory.mktemp("engine-logs"))
    with proc.running(600), GatewayThread(create_app(cfg, [proc.url], health_interval_s=0.5), cfg.gateway.port) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(tool_gateway):
    from openai import OpenAI

    return OpenAI(base_url=f"{tool_gateway.url}/v1", api_key="none", timeout=600)


def test_the_manifest_records_the_template_the_engine_applies(tool_adapters: Path, adapter: str) -> None:
    import hashlib

    manifest = json.loads((tool_adapters / ADAPTER / adapter.split("@")[1] / "loraplane-adapter.json").read_text())
    assert manifest["chat_template"]["sha256"] == hashlib.sha256(TEMPLATE.read_bytes()).hexdigest()


def test_adapter_calls_the_right_function_with_the_right_arguments(client, adapter: str) -> None:  # noqa: ANN001
    rows = heldout_rows()
    assert len(rows) >= 40
    tuned, base = score(client, adapter, rows), score(client, BASE_NAME, rows)
    if report := os.environ.get("LORAPLANE_TOOLS_REPORT"):
        write_report(Path(report), [tuned, base], recipe=str(RECIPE.relative_to(REPO)))
    assert tuned["accuracy"] >= 0.9, tuned["misses"]
    assert base["accuracy"] <= tuned["accuracy"] - 0.5, base


def test_a_streamed_tool_call_arrives_as_deltas(client, adapter: str) -> None:  # noqa: ANN001
    row = heldout_rows()[0]
    name, args = expected_call(row)
    stream = client.chat.completions.create(
        model=adapter, messages=row["messages"][:-1], tools=row["tools"], temperature=0, max_tokens=64, stream=True
    )
    names, arguments, finish = [], "", None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                names += [call.function.name] if call.function and call.function.name else []
                arguments += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    assert names == [name] and json.loads(arguments) == args and finish == "tool_calls"


def test_a_bad_tool_choice_is_a_400_naming_it(client, adapter: str) -> None:  # noqa: ANN001
    from openai import BadRequestError

    row = heldout_rows()[0]
    with pytest.raises(BadRequestError, match="send_email"):
        client.chat.completions.create(
            model=adapter,
            messages=row["messages"][:-1],
            tools=row["tools"],
            max_tokens=8,
            tool_choice={"type": "function", "function": {"name": "send_email"}},
        )
