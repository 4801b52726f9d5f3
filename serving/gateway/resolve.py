"""Model resolution: what the client's `model` means, in one place.

    base name            -> the base model
    experiment name      -> one of its variants, sticky per request key (assign_variant)
    adapter@vN           -> that version (pinned)
    adapter, in rollout  -> stable or candidate by the rollout's weights, sticky per request key
    adapter              -> its stable version (not the newest: see docs/registry.md)

Reads only in-memory snapshots: the control plane's (refreshed by its poll) and the registry's
(refreshed by the same poll): no database I/O, no folder listing. Validation reads an adapter's
files once, on its first use.

`Target.pinned`: the caller chose the version (`adapter@vN`, or X-Loraplane-Variant); such requests
are left out of rollout statistics. `Target.step`: the rollout step whose weights chose the variant.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.errors import NotFound
from serving.gateway.control import ControlPlane
from serving.gateway.experiments import assign_variant
from serving.registry import AdapterRef, AdapterRegistry, RegistrySnapshot, parse_model_name


@dataclass(frozen=True)
class Target:
    """Where a request goes: the base model, or one adapter version (maybe via an experiment or a rollout)."""

    public_model: str  # what the client asked for, validated
    ref: AdapterRef | None  # None: the base model
    experiment: str | None = None
    upstream_model: str = ""
    rollout: str | None = None
    capture_bodies: bool = False  # the experiment/rollout/adapter (config `adapters`) asked for `capture: bodies`
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
    """Resolves a request's `model` against one registry snapshot and the control plane's snapshot;
    owns the set of adapter versions that passed validation (each is validated once, on first use)."""

    def __init__(self, registry: AdapterRegistry, control: ControlPlane):
        self.registry = registry
        self.control = control
        self._validated: set[str] = set()  # adapter keys that passed validation
        # Adapter names whose traffic keeps its bodies wherever it goes (config `adapters: [{capture}]`).
        self._capture = {a.name for a in control.cfg.adapters if a.capture == "bodies"}

    def resolve(self, model: str, request_key: str, pinned: str | None) -> Target:
        base = self.registry.base.name
        if model == base:
            return Target(model, None, upstream_model=base)
        adapters = self.registry.snapshot  # one snapshot for the whole request
        experiments = self.control.experiments
        if model in experiments:
            variant = experiments.choose(model, request_key, pinned)
            ref = self._ref(adapters, *parse_model_name(variant))
            capture = experiments.get(model).capture == "bodies"
            return Target(model, ref, model, ref.key, capture_bodies=capture, pinned=pinned is not None)
        name, version = parse_model_name(model)
        if version is not None:  # the caller named the version: outside any rollout's split
            ref = self._ref(adapters, name, version)
            upstream = f"{name}@{version}"
            return Target(model, ref, upstream_model=upstream, capture_bodies=name in self._capture, pinned=True)
        rollout = self.control.snapshot.active_rollout(name)
        if rollout is not None:
            variant = self._rollout_variant(rollout.name, rollout.weights, request_key, pinned)
            ref = self._ref(adapters, *parse_model_name(variant))
            return Target(
                model,
                ref,
                None,
                ref.key,
                rollout=rollout.name,
                capture_bodies=rollout.capture == "bodies" or name in self._capture,
                step=rollout.step,
                pinned=pinned is not None,
            )
        adapters.resolve(name, None)  # NotFound naming the model when no such adapter
        ref = self._ref(adapters, name, self.control.stable_version(name))
        return Target(model, ref, upstream_model=ref.key, capture_bodies=name in self._capture)

    def approve(self, ref: AdapterRef) -> dict:
        """Validate `ref` now (AdapterRejected naming the reasons) and remember it passed; its manifest."""
        manifest = self.registry.validate(ref)
        self._validated.add(ref.key)
        return manifest

    def forget(self, ref: AdapterRef) -> None:
        """Validate `ref` again on its next use (e.g. after an admin unloaded it)."""
        self._validated.discard(ref.key)

    def _rollout_variant(self, rollout: str, weights: dict[str, int], key: str, pinned: str | None) -> str:
        if pinned is not None:
            if pinned not in weights:
                raise NotFound(
                    f"variant {pinned!r} is not in rollout {rollout!r}; variants: {', '.join(weights)}",
                    param="X-Loraplane-Variant",
                )
            return pinned
        return assign_variant(rollout, key, weights)

    def _ref(self, adapters: RegistrySnapshot, name: str, version: str | None) -> AdapterRef:
        ref = adapters.resolve(name, version)
        if ref.key not in self._validated:
            self.approve(ref)
        return ref
