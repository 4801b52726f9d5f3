"""Fast fixtures for the load-test suite: the mock engine, and the real gateway in front of it.

Both run as uvicorn servers in threads on loopback ports; the load test itself runs as a
subprocess (`python -m loraplane loadtest ...`), because Locust monkey-patches its process.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fakes.engine import MockSettings, create_app
from fakes.registry import write_mock_registry
from fakes.servers import ServerThread, free_port  # noqa: F401  (free_port: for the suite's tests)

REPO = Path(__file__).resolve().parents[2]
BASE = "mock-base"
ADAPTER = "lt-adapter"
EXPERIMENT = "lt-ab"
SLOW_VARIANT = f"{ADAPTER}@v2"
SLOW_MS = 100.0  # injected extra time to first token for SLOW_VARIANT on the mock engine


@pytest.fixture(scope="session")
def mock_engine():
    settings = MockSettings(base=BASE, tokens=8, ttft_ms=20, itl_ms=5, slow_ms={SLOW_VARIANT: SLOW_MS})
    with ServerThread(create_app(settings)) as server:
        yield server


@pytest.fixture
def mock_settings(mock_engine):
    """The live mock's settings, restored after the test (tests may inject faults)."""
    settings: MockSettings = mock_engine.app.state.engine.settings
    saved = dict(vars(settings))
    yield settings
    vars(settings).update(saved)


@dataclass
class GatewayOnMock:
    url: str
    adapter: str
    experiment: str
    base: str


@pytest.fixture(scope="session")
def gateway_on_mock(mock_engine, tmp_path_factory: pytest.TempPathFactory):
    """The real gateway app (serving.gateway.create_app) with the mock as its only engine."""
    from serving.config import load_config
    from serving.gateway.app import create_app as create_gateway

    models_dir, adapters_dir = write_mock_registry(tmp_path_factory.mktemp("lt-registry"), BASE, ADAPTER, ["v1", "v2"])
    cfg = load_config(
        None,
        {
            "base": BASE,
            "registry.models_dir": str(models_dir),
            "registry.adapters_dir": str(adapters_dir),
            "experiments": [{"name": EXPERIMENT, "variants": {f"{ADAPTER}@v1": 50, f"{ADAPTER}@v2": 50}}],
        },
    )
    with ServerThread(create_gateway(cfg, [mock_engine.url], health_interval_s=0.5)) as server:
        yield GatewayOnMock(server.url, ADAPTER, EXPERIMENT, BASE)


def run_loadtest(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`loraplane loadtest ARGS` as a subprocess, as CI and users run it."""
    cmd = [sys.executable, "-m", "loraplane", "loadtest", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
