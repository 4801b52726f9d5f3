"""Our CPU multi-LoRA ops against vLLM's own torch ops: same numbers, and no delta for base tokens."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
vllm_ops = pytest.importorskip("vllm.lora.ops.torch_ops")

from loraplane_vllm import cpu_lora as ours  # noqa: E402

LORAS, RANK, HIDDEN = 4, 8, 64


def _case(tokens: int, dtype: torch.dtype, seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, HIDDEN, generator=gen).to(dtype)
    a = torch.randn(LORAS, 1, RANK, HIDDEN, generator=gen).to(dtype)
    b = torch.randn(LORAS, 1, HIDDEN, RANK, generator=gen).to(dtype)
    idx = torch.randint(0, LORAS, (tokens,), generator=gen)
    return x, a, b, idx


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 7, 8, 33])
def test_shrink_and_expand_match_vllm(dtype: torch.dtype, tokens: int) -> None:
    x, a, b, idx = _case(tokens, dtype, seed=tokens)
    y_vllm, y_ours = torch.zeros(tokens, RANK), torch.zeros(tokens, RANK)
    vllm_ops.bgmv_shrink(x, a, y_vllm, idx, 0.5)
    ours.bgmv_shrink(x, a, y_ours, idx, 0.5)
    # bf16 models: ours rounds the shrink result to bf16 (one rounding, 2^-8 relative), which vLLM's
    # expand does right after anyway; float32 models match to float32 precision.
    shrink_tol = {"rtol": 8e-3, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-3}
    torch.testing.assert_close(y_ours, y_vllm, **shrink_tol)

    start = torch.randn(tokens, HIDDEN).to(dtype)
    out_vllm, out_ours = start.clone(), start.clone()
    vllm_ops.bgmv_expand(y_vllm, b, out_vllm, idx, True)
    ours.bgmv_expand(y_vllm, b, out_ours, idx, True)
    tol = {"rtol": 2e-2, "atol": 5e-1} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-4}
    torch.testing.assert_close(out_ours, out_vllm, **tol)

    sliced_vllm = torch.zeros(tokens, 3 * HIDDEN, dtype=dtype)
    sliced_ours = sliced_vllm.clone()
    vllm_ops.bgmv_expand_slice(y_vllm, b, sliced_vllm, idx, HIDDEN, HIDDEN, False)
    ours.bgmv_expand_slice(y_vllm, b, sliced_ours, idx, HIDDEN, HIDDEN, False)
    torch.testing.assert_close(sliced_ours, sliced_vllm, **tol)
    assert sliced_ours[:, :HIDDEN].abs().sum() == 0 and sliced_ours[:, 2 * HIDDEN :].abs().sum() == 0


def test_prefill_variants_expand_per_sequence_indices() -> None:
    x, a, b, _ = _case(6, torch.float32, seed=1)
    seq_lens, seq_loras = torch.tensor([2, 4]), torch.tensor([3, 1])
    meta = (torch.tensor([0, 2]), seq_lens, seq_loras, 2, 4, 6)
    y_vllm, y_ours = torch.zeros(6, RANK), torch.zeros(6, RANK)
    vllm_ops.sgmv_shrink(x, a, y_vllm, *meta, 1.0)
    ours.sgmv_shrink(x, a, y_ours, *meta, 1.0)
    torch.testing.assert_close(y_ours, y_vllm, rtol=1e-4, atol=1e-3)
    out_vllm, out_ours = torch.zeros(6, HIDDEN), torch.zeros(6, HIDDEN)
    vllm_ops.sgmv_expand(y_vllm, b, out_vllm, *meta, False)
    ours.sgmv_expand(y_vllm, b, out_ours, *meta, False)
    torch.testing.assert_close(out_ours, out_vllm, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("tokens", [4, 12])  # the per-token path and the dense path
def test_tokens_without_an_adapter_get_no_delta(tokens: int) -> None:
    """Index -1 (a base-model request batched with adapter requests) must add nothing; vLLM's
    torch ops read it as the last adapter slot."""
    x, a, b, _ = _case(tokens, torch.float32, seed=2)
    idx = torch.tensor([0, -1, 2, -1] * (tokens // 4))
    y = torch.full((tokens, RANK), 9.0)
    ours.bgmv_shrink(x, a, y, idx, 1.0)
    assert y[1].abs().sum() == 0 and y[3].abs().sum() == 0 and y[0].abs().sum() > 0
    out = torch.zeros(tokens, HIDDEN)
    ours.bgmv_expand(torch.ones(tokens, RANK), b, out, idx, True)
    assert out[1].abs().sum() == 0 and out[3].abs().sum() == 0 and out[2].abs().sum() > 0
    leaked = torch.zeros(tokens, HIDDEN)
    vllm_ops.bgmv_expand(torch.ones(tokens, RANK), b, leaked, idx, True)
    assert leaked[1].abs().sum() > 0  # what the plugin fixes: slot -1 is adapter LORAS - 1


def test_register_patches_the_cpu_punica_wrapper(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    for name in ours.OPS:
        monkeypatch.setattr(punica_cpu, name, getattr(vllm_ops, name))
    monkeypatch.setenv(ours.ENV, "vllm")
    ours.register()
    assert punica_cpu.bgmv_shrink is vllm_ops.bgmv_shrink
    monkeypatch.setenv(ours.ENV, "loraplane")
    ours.register()
    assert all(getattr(punica_cpu, name) is getattr(ours, name) for name in ours.OPS)


def test_empty_slices_are_skipped_until_an_adapter_is_written_into_them() -> None:
    x, a, b, idx = _case(12, torch.float32, seed=3)
    empty_a, empty_b = torch.zeros_like(a), torch.zeros_like(b)
    y = torch.full((12, RANK), 9.0)
    ours.bgmv_shrink(x, empty_a, y, idx, 1.0)
    assert y.abs().sum() == 0  # written as zeros, not left stale
    out = torch.ones(12, HIDDEN)
    ours.bgmv_expand(torch.ones(12, RANK), empty_b, out, idx, True)
    assert torch.equal(out, torch.ones(12, HIDDEN))
    # vLLM loads an adapter by copying into a slot of the stacked tensor, in place
    empty_a[2, 0].copy_(a[2, 0])
    empty_b[2, 0].copy_(b[2, 0])
    expected_y, got_y = torch.zeros(12, RANK), torch.zeros(12, RANK)
    vllm_ops.bgmv_shrink(x, empty_a, expected_y, idx, 1.0)
    ours.bgmv_shrink(x, empty_a, got_y, idx, 1.0)
    torch.testing.assert_close(got_y, expected_y, rtol=1e-4, atol=1e-3)
    assert got_y[idx == 2].abs().sum() > 0
    expected_out, got_out = torch.zeros(12, HIDDEN), torch.zeros(12, HIDDEN)
    vllm_ops.bgmv_expand(expected_y, empty_b, expected_out, idx, False)
    ours.bgmv_expand(expected_y, empty_b, got_out, idx, False)
    torch.testing.assert_close(got_out, expected_out, rtol=1e-5, atol=1e-4)
