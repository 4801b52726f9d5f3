"""loraplane trainer: dataset -> LoRA/QLoRA adapter, evaluated, published to the registry.

Never imports `serving`: the two share files (models/, adapters/), not code.
"""

import logging


class _DropKernelsHubNotice(logging.Filter):
    """bitsandbytes on CPUs with AVX512-BF16 tries to fetch an optional 4-bit kernel from the
    `kernels` hub package at import, and warns on every import when it is absent ("Failed to load
    CPU gemm_4bit_forward from kernels-community"). It then runs 4-bit matmuls with the CPU kernel
    of its own library (same results; the hub kernel is an optional speed-up), so that one notice
    is dropped here, narrowly; docs/training-methods.md says so once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsHubNotice())
