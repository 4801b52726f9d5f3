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

Linear layers go further: `add_lora_linear` replaces the wrapper's per-slice loop (a shrink and an
expand op chain for each of q/k/v, gate/up) with one shrink GEMM over every slice and adapter, a
per-step mask keeping each token's own adapter's block, and one expand GEMM (block-diagonal over
the slices; per slice for large batches). Each layer's matrices are kept until vLLM writes any of
its adapter tensors, and from their second use run on vLLM's prepacked oneDNN matmul, as vLLM's
own CPU linear layers do. The module-level ops stay for the other LoRA paths (logits,
embeddings) and for layouts the fused path does not cover.

vLLM loads this module in every engine process through the `vllm.general_plugins` entry point
(pyproject.toml); `register()` (plugin.py) checks the vLLM version and the signatures these ops
replace, then makes vLLM build `wrapper.LoraplanePunicaWrapperCPU`, a subclass of its CPU punica
wrapper that calls them; only on the CPU platform and unless LORAPLANE_VLLM_LORA_OPS=vllm
(EngineConfig.cpu_lora_ops). This module imports torch: the gateway never imports it.
"""

from __future__ import annotations

import torch

# Below this many tokens per call vLLM's per-token gather is cheaper (measured on 2 cores: 8 adapters,
# rank 16, width 576: even at 8 tokens, 1.2-1.4x faster below, 1.3-2x slower from 16 up, 20x at 640).
DENSE_FROM_TOKENS = 8
OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")


def _cached(weights: torch.Tensor, key: str, make, also: tuple[torch.Tensor, ...] = ()):  # noqa: ANN001, ANN202
    """`make(weights)`, kept on the tensor itself until it (or a tensor in `also`) is written: vLLM
    writes adapter slots in place, which bumps the tensor's version counter. No cache for inference
    tensors (they have no version counter)."""
    try:
        version = tuple(t._version for t in (weights, *also)) if also else weights._version
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


# Up to this many tokens per call the expand runs as one GEMM against a block-diagonal matrix of
# every slice's B (fewest ops); above it, one torch addmm per slice (no multiply by the zero blocks).
# Measured on 2 cores, q/k/v of width 576/192/192, 8 adapters x rank 16: 16 tokens 38 vs 49 us,
# 256 tokens 446 vs 174 us.
BLOCK_EXPAND_MAX_TOKENS = 32


# A layer's matrices are packed for oneDNN on its second call with the same adapters, not its first:
# packing (and oneDNN's first call at each batch size) costs ~0.5-1 ms per matrix, 60 matrices a
# step here, and every adapter load invalidates them all. The step right after a load (the new
# adapter's first prefill, its time to first token) and each load of a burst use torch.mm instead.
PACK_AFTER_CALLS = 1


class _Gemm:
    """`x @ w` for a fixed w ([K, N]): torch.mm at first, then vLLM's oneDNN matmul with w prepacked
    (what vLLM's own CPU linear layers use: 1.3-2x faster than torch.mm at decode sizes here)."""

    def __init__(self, w: torch.Tensor) -> None:
        self.w: torch.Tensor | None = w.contiguous()
        self.handler = None
        self.calls = 0

    def _pack(self) -> None:
        try:
            from vllm import _custom_ops as ops

            if ops._supports_onednn:
                self.handler = ops.create_onednn_mm(self.w, 32)
                self.onednn_mm = ops.onednn_mm
                self.w = None  # the handler holds its own packed copy
        except (ImportError, RuntimeError, AttributeError):
            self.handler = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.handler is None:
            self.calls += 1
            if self.calls == PACK_AFTER_CALLS + 1:
                self._pack()
            if self.handler is None:
                return x @ self.w
        return self.onednn_mm(self.handler, x, None)


class _LayerPlan:
    """What add_lora_linear needs for one wrapped layer, built from its stacked A and B tensors
    (A: S x [L, 1, r, in], B: S x [L, 1, out_s, r]) and rebuilt when vLLM writes any of them."""

    def __init__(self, lora_a_stacked: tuple[torch.Tensor, ...], lora_b_stacked: tuple[torch.Tensor, ...]) -> None:
        a_stacks = [_stack(a) for a in lora_a_stacked]
        self.empty = all(all_zero(a) for a in lora_a_stacked) or all(all_zero(b) for b in lora_b_stacked)
        self.loras, self.rank, _ = a_stacks[0].shape
        self.dtype = a_stacks[0].dtype
        self.sizes = [_stack(b).shape[1] for b in lora_b_stacked]
        if self.empty:
            return
        # shrink: x [T, in] @ [in, S*L*r], every slice's every adapter at once
        self.shrink = _Gemm(torch.cat([a.reshape(-1, a.shape[-1]) for a in a_stacks]).t())
        # expand, per slice (large batches, torch.mm): [T, L*r] @ [L*r, out_s], each adapter's B side by side
        self.sides = [_side_by_side(b).t() for b in lora_b_stacked]
        if len(self.sides) == 1:
            self.block = _Gemm(self.sides[0])
            return
        block = torch.zeros(sum(side.shape[0] for side in self.sides), sum(self.sizes), dtype=self.dtype)
        row = col = 0
        for side in self.sides:
            block[row : row + side.shape[0], col : col + side.shape[1]] = side
            row, col = row + side.shape[0], col + side.shape[1]
        self.block = _Gemm(block)


def _plan(lora_a_stacked: tuple[torch.Tensor, ...], lora_b_stacked: tuple[torch.Tensor, ...]) -> _LayerPlan:
    """The layer's plan, kept on its first A tensor until any of its A or B tensors is written."""
    return _cached(
        lora_a_stacked[0],
        "plan",
        lambda _: _LayerPlan(lora_a_stacked, lora_b_stacked),
        (*lora_a_stacked[1:], *lora_b_stacked),
    )


def _token_mask(wrapper, loras: int, rank: int, dtype: torch.dtype, scale: float) -> torch.Tensor | None:  # noqa: ANN001
    """[T, L*r]: `scale` in the block of each token's own adapter, 0 elsewhere and for tokens
    without one (index -1). Built once per step (the wrapper rewrites its index buffer in place
    every step, which bumps its version counter), or None when no token has an adapter."""
    indices = wrapper.token_lora_indices
    key = (wrapper._token_lora_indices._version, indices.shape[0], loras, rank, dtype, scale)
    hit = getattr(wrapper, "_loraplane_mask", None)
    if hit is None or hit[0] != key:
        onehot = indices.unsqueeze(1) == torch.arange(loras, device=indices.device)
        mask = onehot.repeat_interleave(rank, dim=1).to(dtype) * scale if bool(onehot.any()) else None
        hit = wrapper._loraplane_mask = (key, mask)
    return hit[1]


def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None, **kwargs):  # noqa: ANN001, ANN201
    """PunicaWrapperCPU.add_lora_linear as two or three GEMMs per layer: one shrink for every slice
    (q/k/v, gate/up) and every adapter, a mask keeping each token's own adapter's block, and the
    expand (one block-diagonal GEMM, or one per slice for large batches), instead of a chain of
    small ops per slice. A decode step calls this once per wrapped linear layer, so at small
    batches the number and the speed of its ops are what cost."""
    if self.is_prefill and self.no_lora:  # vLLM's own early exit (base-only steps)
        return None
    plan = _plan(lora_a_stacked, lora_b_stacked)
    if plan.empty:  # no resident adapter touches this layer (e.g. MLP layers for q/k/v/o adapters)
        return None
    x2 = x.view(-1, x.shape[-1])
    y2 = y.view(-1, y.shape[-1])
    mask = _token_mask(self, plan.loras, plan.rank, plan.dtype, scale)
    if mask is None:
        return None
    if mask.shape[0] != x2.shape[0] or list(output_slices) != plan.sizes or sum(plan.sizes) != y2.shape[-1]:
        # layouts this does not cover (padded batches, sharded slices): vLLM's per-slice path, our ops
        return _vllm_add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer)
    tokens, width = x2.shape[0], plan.loras * plan.rank
    xs = x2 if x2.dtype == plan.dtype else x2.to(plan.dtype)
    shrunk = plan.shrink(xs).view(tokens, -1, width).mul_(mask.unsqueeze(1))
    if tokens <= BLOCK_EXPAND_MAX_TOKENS or len(plan.sides) == 1:
        y2.add_(plan.block(shrunk.view(tokens, -1)))
        return None
    offset = 0
    for i, (side, size) in enumerate(zip(plan.sides, plan.sizes, strict=True)):
        if y2.dtype == plan.dtype:
            y2[:, offset : offset + size].addmm_(shrunk[:, i], side)
        else:  # adapters kept in another dtype than the model's
            y2[:, offset : offset + size].add_(shrunk[:, i] @ side)
        offset += size
    return None


def _vllm_add_lora_linear(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    """vLLM's own per-slice add_lora_linear; on our wrapper it runs our ops (wrapper.py overrides)."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    return PunicaWrapperCPU.add_lora_linear(self, *args, **kwargs)


def register() -> None:
    """The vLLM plugin entry point (pyproject.toml): checks vLLM, then selects our wrapper (plugin.py)."""
    from loraplane_vllm import plugin

    plugin.register()
