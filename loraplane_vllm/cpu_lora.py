"""Faster multi-LoRA ops for vLLM's CPU engine, installed as a vLLM general plugin.

vLLM's CPU LoRA path (`vllm.lora.ops.torch_ops`) gathers a copy of each token's adapter matrices
(`weights[indices]`, one [rank x hidden] copy per token) and runs a batched einsum over them, in
eager mode (vLLM turns torch.compile off on CPU when LoRA is enabled). That copy dominates:
measured here, 8 adapters mixed ran at 0.2x the base model's tok/s (benchmarks/RESULTS.md).

These ops compute every resident adapter at once with one dense matmul instead: shrink is
`x @ [A_0; ...; A_{L-1}]^T`, then each token keeps its own adapter's block; expand places each
token's rank-r vector in its adapter's block of a [T, L*r] matrix and multiplies by all B's side
by side. With max_loras * rank small (8 x 16 = 128 columns) the extra flops cost less than the
gathers they replace. Tokens without an adapter (index -1) get no LoRA delta; the torch ops read
index -1 as the last adapter slot instead.

vLLM loads this module in every engine process through the `vllm.general_plugins` entry point
(pyproject.toml); `register()` patches only the CPU platform and only unless
LORAPLANE_VLLM_LORA_OPS=vllm (EngineConfig.cpu_lora_ops). This module imports torch: the gateway
never imports it.
"""

from __future__ import annotations

import os

import torch

ENV = "LORAPLANE_VLLM_LORA_OPS"
# Below this many tokens per call vLLM's per-token gather is cheaper (measured on 2 cores: 8 adapters,
# rank 16, width 576: even at 8 tokens, 1.2-1.4x faster below, 1.3-2x slower from 16 up, 20x at 640).
DENSE_FROM_TOKENS = 8
OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")


def _cached(weights: torch.Tensor, key: str, make):  # noqa: ANN001, ANN202
    """`make(weights)`, kept on the tensor itself until the tensor is written: vLLM writes adapter
    slots in place, which bumps the tensor's version counter. No cache for inference tensors
    (they have no version counter)."""
    try:
        version = weights._version
    except RuntimeError:
        return make(weights)
    cache = weights.__dict__.setdefault("_loraplane_cache", {})
    hit = cache.get(key)
    if hit is None or hit[0] != version:
        hit = cache[key] = (version, make(weights))
    return hit[1]


def all_zero(weights: torch.Tensor) -> bool:
    """True when no resident adapter has weights in this slice (e.g. gate/up/down for q/k/v/o
    adapters: vLLM wraps and computes every projection)."""
    return _cached(weights, "zero", lambda w: not bool(w.any()))


def _side_by_side(weights: torch.Tensor) -> torch.Tensor:
    """Every adapter's B ([L, out, r]) as one [out, L*r] matrix (a copy: cached)."""

    def make(w: torch.Tensor) -> torch.Tensor:
        stack = _stack(w)
        return stack.permute(1, 0, 2).reshape(stack.shape[1], stack.shape[0] * stack.shape[2]).contiguous()

    return _cached(weights, "side_by_side", make)


def _stack(weights: torch.Tensor) -> torch.Tensor:
    """[L, 1, out, in] or [L, out, in] -> [L, out, in]."""
    return weights.squeeze(1) if weights.dim() == 4 else weights


def _per_token_gather(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """vLLM's way (a weight copy per token), cheaper below DENSE_FROM_TOKENS; index -1 gives 0."""
    selected = _stack(weights)[indices.clamp(min=0)].to(dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype), selected)
    return outputs.masked_fill_((indices < 0).unsqueeze(1), 0)


def _all_adapters(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Each token times its own adapter's A ([T, r]), via one matmul with every adapter's A."""
    tokens = inputs.shape[0]
    if tokens < DENSE_FROM_TOKENS:
        return _per_token_gather(inputs, weights, indices, dtype)
    stack = _stack(weights)
    loras, rank, width = stack.shape
    # In the weights' dtype (fp32 accumulation inside the GEMM); vLLM's expand rounds this result to
    # the model dtype anyway. Casting every adapter's A to `dtype` per call cost more than the GEMM.
    every = (inputs.to(stack.dtype) @ stack.reshape(loras * rank, width).t()).view(tokens, loras, rank)
    picked = every[torch.arange(tokens), indices.clamp(min=0)].to(dtype)
    return picked.masked_fill_((indices < 0).unsqueeze(1), 0)


def _blockwise(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Each token's r-vector times its own adapter's B ([T, out]), via one matmul with every B."""
    tokens = inputs.shape[0]
    if tokens < DENSE_FROM_TOKENS:
        return _per_token_gather(inputs, weights, indices, dtype)
    stack = _stack(weights)
    loras, out, rank = stack.shape
    placed = torch.zeros(tokens, loras, rank, dtype=dtype, device=inputs.device)
    rows = torch.nonzero(indices >= 0).squeeze(1)
    placed[rows, indices[rows]] = inputs[rows, :rank].to(dtype)
    return placed.view(tokens, loras * rank) @ _side_by_side(weights).to(dtype).t()


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    if all_zero(lora_a_weights):
        output_tensor[:, : _stack(lora_a_weights).shape[1]] = 0
        return
    outputs = _all_adapters(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    if all_zero(lora_b_weights):
        if not add_inputs:
            output_tensor[:, : _stack(lora_b_weights).shape[1]] = 0
        return
    outputs = _blockwise(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:  # as vLLM's torch op does
        limit = 1
    common = min(outputs.shape[1], output_tensor.shape[1])  # adapter and model may pad differently
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    if all_zero(lora_b_weights):
        if not add_inputs:
            output_tensor[:, slice_offset : slice_offset + slice_size] = 0
        return
    outputs = _blockwise(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def _per_token(lora_indices_tensor: torch.Tensor, seq_len_tensor: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)


def sgmv_shrink(inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, scaling):  # fmt: skip
    bgmv_shrink(inputs, lora_a_weights, output_tensor, _per_token(lora_indices_tensor, seq_len_tensor), scaling)


def sgmv_expand(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, add_inputs=False):  # fmt: skip
    bgmv_expand(inputs, lora_b_weights, output_tensor, _per_token(lora_indices_tensor, seq_len_tensor), add_inputs)


def sgmv_expand_slice(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                      batches, max_seq_length, token_nums, slice_offset, slice_size, add_inputs=False):  # fmt: skip
    indices = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, indices, slice_offset, slice_size, add_inputs)


def register() -> None:
    """vLLM general plugin: swap the CPU punica wrapper's ops for the ones above."""
    if os.environ.get(ENV, "loraplane") == "vllm":
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu
    from vllm.logger import init_logger

    for name in OPS:
        setattr(punica_cpu, name, globals()[name])
    logger = init_logger("vllm.plugins.loraplane")  # under vLLM's logger, so it reaches the engine log
    logger.info_once("loraplane: CPU LoRA ops are dense all-adapter matmuls (%s=vllm keeps vLLM's)", ENV)
