"""`LoraplanePunicaWrapperCPU`: vLLM's CPU punica wrapper with loraplane's ops (cpu_lora.py).

vLLM instantiates it by the qualname the CPU platform returns (loraplane_vllm/plugin.py). It
overrides the six methods that call vLLM's per-token-gather torch ops, and add_lora_linear (the
fused path; layouts it does not cover go to vLLM's per-slice method, which then runs our ops
through the overrides). Building it writes the marker `loraplane serve` checks.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from loraplane_vllm import cpu_lora
from loraplane_vllm.plugin import vllm_version, write_marker


class LoraplanePunicaWrapperCPU(PunicaWrapperCPU):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        write_marker(ops="loraplane", vllm=vllm_version(), wrapper=type(self).__qualname__)

    def _shrink_prefill(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, scale: float) -> None:
        if not self.no_lora:
            cpu_lora.sgmv_shrink(x, w_t_all, y, *self.prefill_metadata, scale)

    def _shrink_decode(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, scale: float) -> None:
        cpu_lora.bgmv_shrink(x, w_t_all, y, self.token_lora_indices, scale)

    def _expand_prefill(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, add_inputs: bool) -> None:
        if not self.no_lora:
            cpu_lora.sgmv_expand(x, w_t_all, y, *self.prefill_metadata, add_inputs)

    def _expand_decode(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, add_inputs: bool) -> None:
        cpu_lora.bgmv_expand(x, w_t_all, y, self.token_lora_indices, add_inputs)

    def _expand_slice_prefill(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        w_t_all: torch.Tensor,
        y_offset: int,
        y_slice_size: int,
        add_inputs: bool,
    ) -> None:
        if not self.no_lora:
            cpu_lora.sgmv_expand_slice(x, w_t_all, y, *self.prefill_metadata, y_offset, y_slice_size, add_inputs)

    def _expand_slice_decode(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        w_t_all: torch.Tensor,
        y_offset: int,
        y_slice_size: int,
        add_inputs: bool,
    ) -> None:
        cpu_lora.bgmv_expand_slice(x, w_t_all, y, self.token_lora_indices, y_offset, y_slice_size, add_inputs)

    def add_lora_linear(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        lora_b_stacked: tuple[torch.Tensor, ...],
        scale: float,
        output_slices: tuple[int, ...],
        *,
        buffer: tuple[torch.Tensor, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        cpu_lora.add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer)
