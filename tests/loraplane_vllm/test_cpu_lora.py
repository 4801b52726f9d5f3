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


def test_register_selects_our_wrapper_at_one_seam(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import json

    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu
    from vllm.lora.punica_wrapper.punica_selector import get_punica_wrapper
    from vllm.platforms import cpu as cpu_platform

    from loraplane_vllm import plugin

    monkeypatch.setattr(cpu_platform.CpuPlatform, "get_punica_wrapper", classmethod(lambda cls: plugin.VLLM_WRAPPER))
    monkeypatch.setattr("vllm.platforms.current_platform", cpu_platform.CpuPlatform(), raising=False)
    monkeypatch.setenv(plugin.MARKER_ENV, str(tmp_path / "marker.json"))
    before = {name: getattr(punica_cpu, name) for name in ours.OPS}
    methods = dict(vars(punica_cpu.PunicaWrapperCPU))
    monkeypatch.setenv(plugin.ENV, "vllm")
    ours.register()
    assert cpu_platform.CpuPlatform.get_punica_wrapper() == plugin.VLLM_WRAPPER
    monkeypatch.setenv(plugin.ENV, "loraplane")
    ours.register()
    assert cpu_platform.CpuPlatform.get_punica_wrapper() == plugin.OUR_WRAPPER
    # nothing else in vLLM changed: its module's ops and its wrapper class are its own
    assert {name: getattr(punica_cpu, name) for name in ours.OPS} == before
    assert dict(vars(punica_cpu.PunicaWrapperCPU)) == methods
    wrapper = get_punica_wrapper(max_num_batched_tokens=64, max_batches=8, device="cpu")  # vLLM's own selector
    assert type(wrapper).__name__ == "LoraplanePunicaWrapperCPU" and isinstance(wrapper, punica_cpu.PunicaWrapperCPU)
    marker = json.loads((tmp_path / "marker.json").read_text())
    assert marker["ops"] == "loraplane" and marker["vllm"] == plugin.vllm_version()


def test_plugin_refuses_another_vllm_before_patching(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import json

    from vllm.platforms import cpu as cpu_platform

    from loraplane_vllm import plugin

    with pytest.raises(plugin.PluginMismatch, match=r"vLLM 0\.99\.0 is not a supported version"):
        plugin.check_vllm("0.99.0")
    monkeypatch.setattr(cpu_platform.CpuPlatform, "get_punica_wrapper", classmethod(lambda cls: plugin.VLLM_WRAPPER))
    monkeypatch.setattr("vllm.platforms.current_platform", cpu_platform.CpuPlatform(), raising=False)

    def renamed(self, y, x, weights, scale):  # noqa: ANN001, ANN202  (a vLLM that renamed a parameter)
        return None

    monkeypatch.setattr("vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU._shrink_decode", renamed)
    monkeypatch.setenv(plugin.MARKER_ENV, str(tmp_path / "marker.json"))
    monkeypatch.setenv(plugin.ENV, "loraplane")
    with pytest.raises(plugin.PluginMismatch, match="PunicaWrapperCPU._shrink_decode"):
        ours.register()
    assert cpu_platform.CpuPlatform.get_punica_wrapper() == plugin.VLLM_WRAPPER  # nothing patched
    marker = json.loads((tmp_path / "marker.json").read_text())
    assert marker["ops"] == "vllm" and "_shrink_decode" in marker["error"]


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


def _wrapper(idx: torch.Tensor, ours_too: bool = False):  # noqa: ANN202
    """vLLM's CPU punica wrapper (or our subclass) with a step's per-token adapter slots set, as its
    update_metadata does."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from loraplane_vllm.wrapper import LoraplanePunicaWrapperCPU

    cls = LoraplanePunicaWrapperCPU if ours_too else PunicaWrapperCPU
    wrapper = cls(max_num_batched_tokens=256, max_batches=256, device="cpu")
    wrapper._token_lora_indices[: idx.shape[0]].copy_(idx)
    wrapper.indices_len[:] = [idx.shape[0]] * 4
    wrapper.is_prefill = True  # vLLM V1 marks every step so
    wrapper._update_prefill_metadata(wrapper.token_lora_indices)  # sets no_lora too
    return wrapper


def _layer(sizes: tuple[int, ...], dtype: torch.dtype, seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    a = tuple(torch.randn(LORAS, 1, RANK, HIDDEN, generator=gen).to(dtype) for _ in sizes)
    b = tuple(torch.randn(LORAS, 1, size, RANK, generator=gen).to(dtype) for size in sizes)
    return a, b


def _reference(y, x, a, b, idx, scale, sizes):  # noqa: ANN001, ANN202
    """y[t, slice s] += scale * x[t] @ A_s[idx[t]]^T @ B_s[idx[t]]^T, in float64; nothing where idx is -1."""
    out = y.double().clone()
    for t, slot in enumerate(idx.tolist()):
        if slot < 0:
            continue
        offset = 0
        for a_s, b_s, size in zip(a, b, sizes, strict=True):
            delta = scale * (x[t].double() @ a_s[slot, 0].double().t()) @ b_s[slot, 0].double().t()
            out[t, offset : offset + size] += delta
            offset += size
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [3, 16, 40])  # block-diagonal expand up to 32 tokens, per slice above
@pytest.mark.parametrize("sizes", [(HIDDEN,), (HIDDEN, 24, 24)])  # o_proj-like, qkv-like (3 slices)
def test_fused_add_lora_linear_matches_the_per_token_math(dtype: torch.dtype, tokens: int, sizes: tuple) -> None:
    a, b = _layer(sizes, dtype, seed=tokens + len(sizes))
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(tokens, HIDDEN, generator=gen).to(dtype)
    idx = torch.randint(-1, LORAS, (tokens,), generator=gen)
    idx[0], idx[1] = -1, 2  # at least one base token and one adapter token
    start = torch.randn(tokens, sum(sizes), generator=gen).to(dtype)
    expected = _reference(start, x, a, b, idx, 0.5, sizes)
    tol = {"rtol": 3e-2, "atol": 1.0} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-3}
    for _ in range(3):  # torch.mm on the plan's first call, vLLM's oneDNN matmul once packed
        y = start.clone()
        ours.add_lora_linear(_wrapper(idx), y, x, a, b, 0.5, sizes)
        torch.testing.assert_close(y.double(), expected, **tol)
        assert torch.equal(y[0], start[0])  # base token: as is
    from vllm import _custom_ops as ops

    assert (ours._plan(a, b).shrink.handler is not None) == ops._supports_onednn  # the oneDNN path ran


def test_fused_add_lora_linear_follows_adapter_writes_and_skips_what_it_can() -> None:
    sizes = (HIDDEN, 24, 24)
    a, b = _layer(sizes, torch.float32, seed=11)
    empty_a, empty_b = tuple(torch.zeros_like(t) for t in a), tuple(torch.zeros_like(t) for t in b)
    x = torch.randn(12, HIDDEN)
    idx = torch.tensor([0, 1, 2, 3, -1, 2] * 2)
    y = torch.randn(12, sum(sizes))
    before = y.clone()
    ours.add_lora_linear(_wrapper(idx), y, x, empty_a, empty_b, 1.0, sizes)
    assert torch.equal(y, before)  # no resident adapter touches the layer
    for a_s, b_s, src_a, src_b in zip(empty_a, empty_b, a, b, strict=True):  # vLLM loads slot 2 in place
        a_s[2].copy_(src_a[2])
        b_s[2].copy_(src_b[2])
    ours.add_lora_linear(_wrapper(idx), y, x, empty_a, empty_b, 1.0, sizes)
    expected = _reference(before, x, empty_a, empty_b, idx, 1.0, sizes)
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-3)
    assert not torch.equal(y[idx == 2], before[idx == 2]) and torch.equal(y[idx != 2], before[idx != 2])
    # a base-only step (vLLM's no_lora) adds nothing, whatever is resident
    base_only = y.clone()
    ours.add_lora_linear(_wrapper(torch.full((12,), -1)), base_only, x, a, b, 1.0, sizes)
    assert torch.equal(base_only, y)


def test_fused_add_lora_linear_falls_back_to_the_per_slice_path_for_other_layouts() -> None:
    """An output wider than the slices (not a layout vLLM's CPU layers make today) goes to vLLM's
    per-slice path, run with our ops (our wrapper's overrides): same result, the extra columns untouched."""
    sizes = (HIDDEN, 24, 24)
    a, b = _layer(sizes, torch.float32, seed=13)
    idx = torch.tensor([1, -1, 3, 0] * 3)
    x = torch.randn(12, HIDDEN)
    y = torch.randn(12, sum(sizes) + 5)
    expected = _reference(y[:, : sum(sizes)], x, a, b, idx, 1.0, sizes)
    extra = y[:, sum(sizes) :].clone()
    _wrapper(idx, ours_too=True).add_lora_linear(y, x, a, b, 1.0, sizes)
    torch.testing.assert_close(y[:, : sum(sizes)].double(), expected, rtol=1e-4, atol=1e-3)
    assert torch.equal(y[:, sum(sizes) :], extra)
