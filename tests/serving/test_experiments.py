"""A/B assignment: a pure deterministic function whose split matches the weights (chi-square)."""

from __future__ import annotations

import pytest
from scipy.stats import chisquare

from serving.errors import NotFound
from serving.gateway.experiments import Experiment, ExperimentTable, assign_variant

VARIANTS = {"support-bot@v1": 90, "support-bot@v2": 10}


def test_split_matches_weights_by_chi_square() -> None:
    keys = [f"user-{i}" for i in range(5000)]
    counts = {v: 0 for v in VARIANTS}
    for key in keys:
        counts[assign_variant("support-bot", key, VARIANTS)] += 1
    expected = [len(keys) * w / 100 for w in VARIANTS.values()]
    result = chisquare(list(counts.values()), expected)
    assert result.pvalue > 0.001, (counts, result)
    assert 400 < counts["support-bot@v2"] < 600


def test_sticky_and_pure() -> None:
    first = [assign_variant("support-bot", f"k{i}", VARIANTS) for i in range(2000)]
    again = [assign_variant("support-bot", f"k{i}", dict(reversed(list(VARIANTS.items())))) for i in range(2000)]
    assert first == again  # same key -> same variant, independent of dict order


def test_experiments_are_independent() -> None:
    a = [assign_variant("exp-a", f"k{i}", {"x@v1": 50, "x@v2": 50}) for i in range(2000)]
    b = [assign_variant("exp-b", f"k{i}", {"x@v1": 50, "x@v2": 50}) for i in range(2000)]
    agreement = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    assert 0.4 < agreement < 0.6  # salted by experiment name: not the same users in every test


def test_raising_v2_weight_only_moves_users_towards_v2() -> None:
    before = {f"k{i}": assign_variant("e", f"k{i}", {"m@v1": 90, "m@v2": 10}) for i in range(3000)}
    after = {k: assign_variant("e", k, {"m@v1": 50, "m@v2": 50}) for k in before}
    assert all(after[k] == "m@v2" for k, v in before.items() if v == "m@v2")
    assert sum(v == "m@v2" for v in after.values()) > sum(v == "m@v2" for v in before.values())


def test_zero_weight_variant_never_chosen() -> None:
    assert {assign_variant("e", f"k{i}", {"m@v1": 0, "m@v2": 1}) for i in range(500)} == {"m@v2"}


def test_table_pin_and_unknown() -> None:
    table = ExperimentTable([Experiment("support-bot", dict(VARIANTS))])
    assert table.choose("support-bot", "anyone", "support-bot@v2") == "support-bot@v2"
    with pytest.raises(NotFound, match="support-bot@v7"):
        table.choose("support-bot", "anyone", "support-bot@v7")
    with pytest.raises(NotFound, match="nope"):
        table.get("nope")
    table.set("support-bot", {"support-bot@v2": 1})
    assert table.choose("support-bot", "anyone", None) == "support-bot@v2"
