"""`loraplane quantize` refuses bad input before spending a minute of calibration."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from trainer.errors import ConfigError, DataError, TrainerError
from trainer.quantize import (
    QuantizeOptions,
    check_group_size,
    linear_input_widths,
    load_calibration,
    main,
    quantize,
)

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "models" / "smollm2-135m-instruct"


def write_safetensors_header(path: Path, shapes: dict[str, list[int]]) -> None:
    header = {name: {"dtype": "BF16", "shape": shape, "data_offsets": [0, 0]} for name, shape in shapes.items()}
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)


def opts(tmp_path: Path, **overrides) -> QuantizeOptions:
    """Options that can never reach the quantizer: no environment, and none may be created."""
    base = {"base": str(BASE), "models_dir": tmp_path, "quant_venv": tmp_path / "no-venv", "setup": False}
    return QuantizeOptions(**{**base, **overrides})


def test_unknown_method_lists_supported() -> None:
    with pytest.raises(ConfigError, match=r"--method 'hqq'.*gptq \(bits 4\), awq \(bits 4\), int8 \(bits 8\)"):
        QuantizeOptions(method="hqq")


def test_unsupported_bits_lists_supported() -> None:
    with pytest.raises(ConfigError, match=r"--bits 3 is not supported for --method gptq; supported: gptq"):
        QuantizeOptions(method="gptq", bits=3)


def test_bad_calibration_sizes_refused() -> None:
    for grid in (1, 2):  # 2 points make llm-compressor divide by zero (n_grid - 2)
        with pytest.raises(ConfigError, match="--awq-grid >= 3"):
            QuantizeOptions(method="awq", group_size=64, awq_grid=grid)
    QuantizeOptions(method="awq", group_size=64, awq_grid=3)


def test_cli_prints_one_line_error_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--method", "awq", "--bits", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loraplane quantize: error: --bits 8 is not supported for --method awq")


def test_group_size_checked_against_layer_widths(tmp_path: Path) -> None:
    write_safetensors_header(
        tmp_path / "model.safetensors",
        {
            "model.embed_tokens.weight": [49152, 576],  # skipped: stays full precision
            "model.layers.0.self_attn.q_proj.weight": [576, 576],
            "model.layers.0.mlp.down_proj.weight": [576, 1536],
            "model.norm.weight": [576],  # 1-D: not a linear layer
        },
    )
    widths = linear_input_widths(tmp_path)
    assert widths == {"model.layers.0.self_attn.q_proj": 576, "model.layers.0.mlp.down_proj": 1536}
    check_group_size(widths, 64)
    with pytest.raises(ConfigError, match=r"576 is not a multiple of 128.*group sizes that fit: 64, 32, 16"):
        check_group_size(widths, 128)


@pytest.mark.skipif(not BASE.is_dir(), reason="bundled base not pulled (make base)")
def test_group_size_128_refused_for_bundled_model_before_starting(tmp_path: Path) -> None:
    # The environment is missing and may not be created: the group-size error must come first.
    with pytest.raises(ConfigError, match="576 is not a multiple of 128"):
        quantize(opts(tmp_path, group_size=128))
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.skipif(not BASE.is_dir(), reason="bundled base not pulled (make base)")
def test_missing_quantizer_says_how_setup_installs_it(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match=r"not installed.*make setup-quant.*scripts/setup-quant.sh"):
        quantize(opts(tmp_path, group_size=64))


def test_calibration_file_checked(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_calibration(tmp_path / "none.jsonl", 8)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"prompt": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: a calibration row needs 'messages'"):
        load_calibration(bad, 8)
    samples, sha = load_calibration(bad, 1)
    assert samples == [{"messages": [{"role": "user", "content": "hi"}]}] and len(sha) == 64


def test_output_name_says_method_and_bits() -> None:
    assert QuantizeOptions(method="gptq", group_size=64).output_name("base") == "base-gptq-w4"
    assert QuantizeOptions(method="awq", group_size=64).output_name("base") == "base-awq-w4"
    assert QuantizeOptions(method="int8", bits=8).output_name("base") == "base-int8-w8a8"
