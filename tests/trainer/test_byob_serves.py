"""Bring your own base, end to end: a randomly initialised checkpoint made here (not bundled)
goes through `loraplane base add` -> `loraplane train` (a few steps, published) -> a real vLLM
CPU engine -> the gateway, and the real `openai` client gets an answer from the adapter.

Two architectures: Llama (DeepSeek-LLM-7B's) and Qwen2 (biased q/k/v projections).
One engine per architecture, started once per module parameter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openai
import pytest

from fakes.servers import free_port
from tests.conftest import ADMIN_KEY, REPO, GatewayThread
from tests.trainer.tiny_bases import ARCHITECTURES, make_tiny_base
from trainer.registry_contract import ADAPTER_MANIFEST, BASE_MANIFEST

pytestmark = pytest.mark.slow

ADAPTER = "byob-json"


def run_cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "loraplane", *args], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, f"loraplane {args[0]} failed:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module", params=ARCHITECTURES)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    kind: str = request.param
    root = tmp_path_factory.mktemp(f"byob-{kind}")
    checkpoint = make_tiny_base(root / "checkpoints" / f"Tiny-{kind}", kind)
    models, adapters, base = root / "models", root / "adapters", f"tiny-{kind}"
    run_cli("base", "add", str(checkpoint), "--name", base, "--models-dir", str(models))
    run_cli("train", "--config", str(REPO / "configs/train/demo.yaml"), "--base", base, "--models_dir", str(models),
            "--train.max_steps", "3", "--eval.max_examples", "2", "--eval.max_new_tokens", "4",
            "--publish.name", ADAPTER, "--publish.version", "v1", "--publish.adapters_dir", str(adapters),
            "--out_dir", str(root / "run"))  # fmt: skip
    yield from _serve(root, models, adapters, base)


def _serve(root: Path, models: Path, adapters: Path, base: str):
    from serving.config import load_config
    from serving.engines.process import EngineProcess
    from serving.gateway.app import create_app
    from serving.gateway.auth import hash_key
    from serving.registry import read_base

    cfg = load_config(None, {"base": base, "registry.models_dir": str(models), "registry.adapters_dir": str(adapters),
                             "engine.port": free_port(), "engine.max_model_len": 512, "gateway.port": free_port(),
                             "auth.admin_key_sha256": hash_key(ADMIN_KEY)})  # fmt: skip
    info = read_base(models, base)
    engine = EngineProcess(cfg, info.path, info.name, 0, root / "engine-logs")
    app = create_app(cfg, [engine.url], health_interval_s=0.5)
    with engine.running(600), GatewayThread(app, cfg.gateway.port) as gw:
        yield base, models, adapters, gw.url


def test_the_adapter_pins_the_added_base(served) -> None:
    import json

    base, models, adapters, _ = served
    pinned = json.loads((adapters / ADAPTER / "v1" / ADAPTER_MANIFEST).read_text())["base"]
    registered = json.loads((models / base / BASE_MANIFEST).read_text())
    assert pinned["weights_sha256"] == registered["weights_sha256"]


def test_an_answer_through_the_gateway_with_the_adapter(served) -> None:
    base, _, _, url = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    ids = {m.id for m in client.models.list().data}
    assert {base, f"{ADAPTER}@v1"} <= ids, ids
    raw = client.chat.completions.with_raw_response.create(
        model=f"{ADAPTER}@v1", messages=[{"role": "user", "content": "Order 7 from Ann: tea. JSON:"}],
        max_tokens=6, temperature=0,
    )  # fmt: skip
    assert raw.headers["x-loraplane-adapter"] == f"{ADAPTER}@v1"
    reply = raw.parse()
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
