"""A/B experiments: a public model name split across adapter versions by weight.

`assign_variant` is the one pure, deterministic function of (experiment, request key):
sha256("<experiment>\\0<key>") read as a number in [0, 1) picks the variant whose cumulative
weight range holds it. Same key -> same variant while the weights stay the same; changing
the weights moves only the keys in the ranges that moved.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from serving.errors import NotFound


def assign_variant(experiment: str, key: str, variants: dict[str, int]) -> str:
    digest = hashlib.sha256(f"{experiment}\0{key}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    total = sum(variants.values())
    cumulative = 0.0
    chosen = next(iter(variants))
    for variant, weight in sorted(variants.items()):
        if weight <= 0:
            continue
        chosen = variant
        cumulative += weight / total
        if point < cumulative:
            return variant
    return chosen  # float rounding at the very top of the range


@dataclass
class Experiment:
    name: str
    variants: dict[str, int]
    capture: str = "none"  # "bodies": its requests' bodies are kept (store.body_retention_s)


class ExperimentTable:
    """Experiments by name; weights can be replaced at runtime (admin API)."""

    def __init__(self, experiments: list[Experiment]):
        self._by_name = {e.name: e for e in experiments}

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def all(self) -> list[Experiment]:
        return list(self._by_name.values())

    def get(self, name: str) -> Experiment:
        if name not in self._by_name:
            raise NotFound(
                f"experiment {name!r} does not exist; experiments: {', '.join(self._by_name) or 'none'}",
                param="model",
                code="model_not_found",
            )
        return self._by_name[name]

    def set(self, name: str, variants: dict[str, int]) -> Experiment:
        experiment = Experiment(name, dict(variants))
        self._by_name[name] = experiment
        return experiment

    def choose(self, name: str, key: str, pinned: str | None) -> str:
        experiment = self.get(name)
        if pinned is not None:
            if pinned not in experiment.variants:
                raise NotFound(
                    f"variant {pinned!r} is not in experiment {name!r}; variants: {', '.join(experiment.variants)}",
                    param="X-Loraplane-Variant",
                )
            return pinned
        return assign_variant(name, key, experiment.variants)
