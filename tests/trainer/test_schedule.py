"""Learning-rate schedule: linear warmup, then cosine/linear decay to the floor."""

from __future__ import annotations

import math

import pytest

from trainer.train import lr_lambda


def test_warmup_then_cosine():
    values = [lr_lambda(s, max_steps=10, warmup_steps=2, schedule="cosine", min_ratio=0.0) for s in range(10)]
    assert values[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in zip(values[2:], values[3:], strict=False))  # monotone decay
    assert values[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_linear_with_floor_and_constant():
    assert lr_lambda(10, 10, 0, "linear", 0.1) == pytest.approx(0.1)
    assert lr_lambda(5, 10, 0, "linear", 0.0) == pytest.approx(0.5)
    assert lr_lambda(7, 10, 2, "constant", 0.0) == 1.0
