"""The serving config: every shipped YAML loads; bad keys and values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import load_config
from serving.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SERVING_YAMLS = sorted(REPO.glob("configs/serving/*.yaml"))


def test_there_are_serving_configs() -> None:
    assert {p.name for p in SERVING_YAMLS} >= {"default.yaml", "demo.yaml"}


@pytest.mark.parametrize("path", SERVING_YAMLS, ids=lambda p: p.name)
def test_shipped_yaml_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.engine.max_lora_rank >= 8


def test_demo_experiment_is_90_10() -> None:
    cfg = load_config(REPO / "configs/serving/demo.yaml")
    assert cfg.experiments[0].variants == {"demo-json@v1": 90, "demo-json@v2": 10}


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"engine\.max_lorass"):
        load_config(None, {"engine.max_lorass": 3})


def test_bad_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"gateway\.port"):
        load_config(None, {"gateway.port": 70000})


@pytest.mark.parametrize("variants", [{"bot": 1}, {"bot@v1": -1}, {}, {"../x@v1": 1}])
def test_bad_experiment_variants_rejected(variants: dict) -> None:
    with pytest.raises(ConfigError, match="experiments"):
        load_config(None, {"experiments": [{"name": "bot", "variants": variants}]})


def test_files_merge_in_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("gateway: {port: 9000, host: 0.0.0.0}\n")
    b.write_text("gateway: {port: 9001}\nauth: {enabled: true}\n")
    cfg = load_config([a, b])
    assert (cfg.gateway.port, cfg.gateway.host, cfg.auth.enabled) == (9001, "0.0.0.0", True)


def test_no_engine_at_all_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least one engine"):
        load_config(None, {"engine.replicas": 0})


def test_cpu_lora_cache_smaller_than_batch_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"max_cpu_loras \(2\) must be >= max_loras \(4\)"):
        load_config(None, {"engine.max_cpu_loras": 2, "engine.max_loras": 4})


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_local_dev_open_admin_on_loopback(host: str) -> None:
    assert load_config(None, {"auth.local_dev_open_admin": True, "gateway.host": host}).auth.local_dev_open_admin


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "gateway.example"])
def test_local_dev_open_admin_refused_off_loopback(host: str) -> None:
    with pytest.raises(ConfigError, match=f"gateway.host is '{host}'"):
        load_config(None, {"auth.local_dev_open_admin": True, "gateway.host": host})
