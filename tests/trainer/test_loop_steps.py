"""The loop's named steps: measure the gradient norm, then clip (as torch's clip_grad_norm_); quiet imports."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.trainer.sample_data import REPO
from trainer.dashboard import grad_norm
from trainer.train import clip_gradients


def run_with_grads(max_grad_norm: float | None, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)  # frozen: not measured, not clipped
    (model(torch.randn(5, 4)) * 10).pow(2).sum().backward()
    cfg = SimpleNamespace(train=SimpleNamespace(max_grad_norm=max_grad_norm))
    return SimpleNamespace(cfg=cfg, model=model)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_gradients_equals_torch_clip_grad_norm(max_norm):
    ours, theirs = run_with_grads(max_norm), run_with_grads(max_norm)
    trainable = [p for p in theirs.model.parameters() if p.requires_grad]
    norm = grad_norm(ours)
    assert float(norm) == pytest.approx(float(torch.nn.utils.clip_grad_norm_(trainable, max_norm)), rel=1e-6)
    clip_gradients(ours, norm)
    for a, b in zip(ours.model.parameters(), theirs.model.parameters(), strict=True):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)
    assert float(grad_norm(ours)) == pytest.approx(min(float(norm), max_norm), rel=1e-5)


def test_no_clipping_without_max_grad_norm():
    run = run_with_grads(None)
    with_grads = [p for p in run.model.parameters() if p.grad is not None]
    before = [p.grad.clone() for p in with_grads]
    clip_gradients(run, grad_norm(run))
    assert all(torch.equal(a, p.grad) for a, p in zip(before, with_grads, strict=True))


def test_the_bitsandbytes_kernels_hub_notice_is_not_printed():
    notice = "Failed to load CPU gemm_4bit_forward"
    code = "import trainer, bitsandbytes.backends.cpu.ops"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert notice not in done.stderr + done.stdout
    # without the trainer's filter this machine may print it (CPUs with AVX512-BF16 and no `kernels` package)
    bare = subprocess.run(
        [sys.executable, "-c", "import bitsandbytes.backends.cpu.ops"], capture_output=True, text=True
    )
    print("without the filter:", notice in bare.stderr)
