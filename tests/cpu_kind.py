"""Which kind of CPU the tests run on: printed at the top of every session (tests/conftest.py).

Numbers computed in bf16 depend on the kernels oneDNN picks, and those depend on the CPU kind:
AVX2 only (no native bf16: the engine runs float32), AVX-512 with AVX512-BF16 (e.g. AMD EPYC),
AVX-512 with AMX (Intel Xeon: amx_bf16 tile kernels, chosen per batch shape). `ONEDNN_MAX_CPU_ISA`
caps the kernels oneDNN may use (torch's and vLLM's both), so one machine can run another kind's
code path, e.g. `ONEDNN_MAX_CPU_ISA=AVX512_CORE` (bf16 without native bf16 dot products) or `AVX2`.
Tests whose expectations depend on the kind say so and read it from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from serving.engines.capabilities import AVX512_FLAGS, read_cpu_flags

ISA_CAP_ENV = "ONEDNN_MAX_CPU_ISA"


@dataclass(frozen=True)
class CpuKind:
    model: str
    flags: frozenset[str]
    isa_cap: str | None  # ONEDNN_MAX_CPU_ISA, when set

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return self.flags >= AVX512_FLAGS

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    @property
    def amx(self) -> bool:
        return "amx_bf16" in self.flags or "amx_int8" in self.flags

    @property
    def bf16_kernels(self) -> bool:
        """Native bf16 matmuls, and oneDNN allowed to use them (the cap keeps AVX-512 or above)."""
        allowed = self.isa_cap is None or self.isa_cap.upper().startswith(("AVX512", "AVX10", "DEFAULT"))
        return (self.avx512_bf16 or self.amx) and allowed

    def describe(self) -> str:
        def yes(flag: bool) -> str:
            return "yes" if flag else "no"

        bf16, amx = yes(self.avx512_bf16), yes(self.amx)
        features = f"AVX2 {yes(self.avx2)}, AVX-512 {yes(self.avx512)}, AVX512-BF16 {bf16}, AMX {amx}"
        cap = f"; oneDNN kernels capped at {self.isa_cap} ({ISA_CAP_ENV})" if self.isa_cap else ""
        return f"{self.model or 'unknown CPU'}: {features}{cap}"


def read_cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first CPU's `model name` in /proc/cpuinfo ("" when there is none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return ""


def cpu_kind(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuKind:
    return CpuKind(read_cpu_model(cpuinfo), read_cpu_flags(cpuinfo), os.environ.get(ISA_CAP_ENV) or None)
