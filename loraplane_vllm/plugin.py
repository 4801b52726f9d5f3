"""The vLLM plugin's entry: check vLLM first, then select our CPU punica wrapper, at one seam.

`register()` (entry point `vllm.general_plugins: loraplane_cpu_lora`, run in every vLLM process):
1. only on the CPU platform, and unless LORAPLANE_VLLM_LORA_OPS=vllm;
2. checks, before changing anything, that the installed vLLM is a version these ops were written
   and measured against (SUPPORTED_VLLM) and that every method and op they replace still has the
   signature they were written for; any mismatch raises, naming the vLLM version and the seam;
3. changes exactly one thing in vLLM: the CPU platform's `get_punica_wrapper()`, the qualname
   vLLM's own selector (vllm/lora/punica_wrapper/punica_selector.py) instantiates, now names
   `loraplane_vllm.wrapper.LoraplanePunicaWrapperCPU`, a subclass of vLLM's PunicaWrapperCPU.

vLLM only logs a plugin that raises and goes on with its own ops, so the outcome is also written
to the marker file named by LORAPLANE_VLLM_MARKER: the wrapper writes {"ops": "loraplane"} when
vLLM really builds it; a failed check writes {"ops": "vllm", "error": ...}. `loraplane serve`
reads it and refuses to report an engine healthy without the first (serving/engines/process.py).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

ENV = "LORAPLANE_VLLM_LORA_OPS"
MARKER_ENV = "LORAPLANE_VLLM_MARKER"
SUPPORTED_VLLM = ("0.32.",)  # version prefixes the ops were tested and measured on
VLLM_WRAPPER = "vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU"
OUR_WRAPPER = "loraplane_vllm.wrapper.LoraplanePunicaWrapperCPU"
# The PunicaWrapperCPU methods the subclass overrides, with the parameters they were written for.
METHODS = {
    "_shrink_prefill": ("self", "y", "x", "w_t_all", "scale"),
    "_shrink_decode": ("self", "y", "x", "w_t_all", "scale"),
    "_expand_prefill": ("self", "y", "x", "w_t_all", "add_inputs"),
    "_expand_decode": ("self", "y", "x", "w_t_all", "add_inputs"),
    "_expand_slice_prefill": ("self", "y", "x", "w_t_all", "y_offset", "y_slice_size", "add_inputs"),
    "_expand_slice_decode": ("self", "y", "x", "w_t_all", "y_offset", "y_slice_size", "add_inputs"),
    "add_lora_linear": (
        "self",
        "y",
        "x",
        "lora_a_stacked",
        "lora_b_stacked",
        "scale",
        "output_slices",
        "buffer",
        "kwargs",
    ),  # fmt: skip
}


class PluginMismatch(RuntimeError):
    """The installed vLLM is not the one these ops fit: nothing was patched."""


def vllm_version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def _params(fn: Any) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)


def check_vllm(version: str | None = None) -> None:
    """Raise PluginMismatch unless every seam the plugin touches is as it was written for."""
    import vllm.lora.ops.torch_ops as torch_ops
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    from vllm.platforms.cpu import CpuPlatform

    from loraplane_vllm import cpu_lora

    version = version or vllm_version()
    problems = []
    if not version.startswith(SUPPORTED_VLLM):
        problems.append(f"vLLM {version} is not a supported version ({', '.join(p + 'x' for p in SUPPORTED_VLLM)})")
    for name, expected in METHODS.items():
        found = _params(getattr(PunicaWrapperCPU, name, None) or (lambda: None))
        if found != expected:
            problems.append(f"PunicaWrapperCPU.{name}{found} is not {name}{expected}")
    for name in cpu_lora.OPS:  # called positionally: the same number of parameters, in vLLM's order
        theirs, ours = _params(getattr(torch_ops, name)), _params(getattr(cpu_lora, name))
        if len(theirs) != len(ours):
            problems.append(f"vllm.lora.ops.torch_ops.{name}{theirs} does not take {name}{ours}")
    if CpuPlatform.get_punica_wrapper() != VLLM_WRAPPER:
        problems.append(f"CpuPlatform.get_punica_wrapper() is {CpuPlatform.get_punica_wrapper()!r}, not {VLLM_WRAPPER}")
    if problems:
        raise PluginMismatch(
            f"loraplane's CPU LoRA ops do not fit vLLM {version}: {'; '.join(problems)}. Nothing was patched; "
            "install a supported vLLM or set engine.cpu_lora_ops: vllm"
        )


def write_marker(**fields: Any) -> None:
    path = os.environ.get(MARKER_ENV)
    if path:
        Path(path).write_text(json.dumps({**fields, "pid": os.getpid()}))


def register() -> None:
    if os.environ.get(ENV, "loraplane") == "vllm":
        return
    from vllm.logger import init_logger
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    logger = init_logger("vllm.plugins.loraplane")  # under vLLM's logger, so it reaches the engine log
    try:
        check_vllm()
    except PluginMismatch as exc:
        write_marker(ops="vllm", vllm=vllm_version(), error=str(exc))
        logger.error("loraplane: %s", exc)
        raise
    from vllm.platforms.cpu import CpuPlatform

    CpuPlatform.get_punica_wrapper = classmethod(lambda cls: OUR_WRAPPER)  # type: ignore[method-assign]
    logger.info_once("loraplane: CPU LoRA ops are dense all-adapter matmuls (%s=vllm keeps vLLM's)", ENV)
