"""Model resolution: what the client's `model` means, in one place.

    base name            -> the base model
    experiment name      -> one of its variants, sticky per request key (assign_variant)
    adapter@vN           -> that version (pinned)
    adapter, in rollout  -> stable or candidate by the rollout's weights, sticky per request key
    adapter              -> its stable version (not the newest: see docs/registry.md)

Reads only the control plane's in-memory snapshot and the registry directory: no database I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.errors import NotFound
from serving.experiments import assign_variant
from serving.gateway.control import ControlPlane
from serving.registry import AdapterRef, AdapterRegistry, parse_model_name


@dataclass(frozen=True)
class Target:
    """Where a request goes: the base model, or one adapter version (maybe via an experiment or a rollout)."""

    public_model: str  # what the client asked for, validated
    ref: AdapterRef | None  # None: the base model
    experiment: str | None = None
    upstream_model: str = ""
    rollout: str | None = None
    capture_bodies: bool = False  # the experiment/rollout asked for `capture: bodies`
    step: int | None = None  # the rollout's step index whose weights chose the variant
    pinned: bool = False  # the caller chose the variant (left out of rollout statistics)

    @property
    def adapter_label(self) -> str:
        return self.ref.key if self.ref else self.upstream_model

    @property
    def variant_label(self) -> str:
        """The adapter version that answered ("none" for the base): per-version numbers even without
        an experiment. Bounded: versions come from the registry, never from the client."""
        return self.ref.key if self.ref else "none"

    @property
    def model_label(self) -> str:
        return self.experiment or (self.ref.name if self.ref else self.upstream_model)


class Resolver:
    def __init__(self, registry: AdapterRegistry, control: ControlPlane):
        self.registry = registry
        self.control = control
        self.validated: set[str] = set()  # adapter keys that passed validation

    def resolve(self, model: str, request_key: str, pinned: str | None) -> Target:
        base = self.registry.base.name
        if model == base:
            return Target(model, None, upstream_model=base)
        experiments = self.control.experiments
        if model in experiments:
            variant = experiments.choose(model, request_key, pinned)
            ref = self._ref(*parse_model_name(variant))
            return Target(model, ref, model, ref.key, capture_bodies=experiments.get(model).capture == "bodies")
        name, version = parse_model_name(model)
        if version is not None:
            return Target(model, self._ref(name, version), upstream_model=f"{name}@{version}")
        rollout = self.control.snapshot.active_rollout(name)
        if rollout is not None:
            variant = self._rollout_variant(rollout.name, rollout.weights, request_key, pinned)
            ref = self._ref(*parse_model_name(variant))
            return Target(model, ref, None, ref.key, rollout=rollout.name, capture_bodies=rollout.capture == "bodies")
        self.registry.resolve(name, None)  # NotFound naming the model when no such adapter
        ref = self._ref(name, self.control.stable_version(name))
        return Target(model, ref, upstream_model=ref.key)

    def _rollout_variant(self, rollout: str, weights: dict[str, int], key: str, pinned: str | None) -> str:
        if pinned is not None:
            if pinned not in weights:
                raise NotFound(
                    f"variant {pinned!r} is not in rollout {rollout!r}; variants: {', '.join(weights)}",
                    param="X-Loraplane-Variant",
                )
            return pinned
        return assign_variant(rollout, key, weights)

    def _ref(self, name: str, version: str | None) -> AdapterRef:
        ref = self.registry.resolve(name, version)
        if ref.key not in self.validated:
            self.registry.validate(ref)
            self.validated.add(ref.key)
        return ref
