"""A rendered release of helm/loraplane and where the chart lives (shared by tests/helm).

A case is the chart's defaults ("default") or one of helm/loraplane/ci/*-values.yaml ("gpu", ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "loraplane"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
CASES = ["default"] + [path.name.removesuffix("-values.yaml") for path in CI_VALUES]
RELEASE, NAMESPACE = "lp", "ai"
PREFIX = "lp-loraplane"  # the full name of release "lp"
POD_KINDS = ("Deployment", "StatefulSet", "Pod")


@dataclass
class Release:
    """One rendered release: template path -> text, and the parsed Kubernetes objects."""

    case: str
    values: dict[str, Any]
    templates: dict[str, str]

    @cached_property
    def docs(self) -> list[dict[str, Any]]:
        return [
            doc
            for path, text in sorted(self.templates.items())
            if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    def find(self, kind: str, name: str) -> dict[str, Any]:
        matches = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert len(matches) == 1, f"{self.case}: expected one {kind}/{name}, found {len(matches)}"
        return matches[0]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def pod_spec(self, doc: dict[str, Any]) -> dict[str, Any]:
        return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]

    def container(self, doc: dict[str, Any], name: str) -> dict[str, Any]:
        spec = self.pod_spec(doc)
        found = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
        assert len(found) == 1, f"{self.case}: no single container {name!r} in {doc['metadata']['name']}"
        return found[0]

    @property
    def engine(self) -> dict[str, Any]:
        return self.find("StatefulSet", f"{PREFIX}-engine")

    @property
    def gateway(self) -> dict[str, Any]:
        return self.find("Deployment", f"{PREFIX}-gateway")

    def serving_yaml(self) -> dict[str, Any]:
        return yaml.safe_load(self.find("ConfigMap", f"{PREFIX}-gateway")["data"]["serving.yaml"])


def case_values(case: str) -> dict[str, Any]:
    if case == "default":
        return {}
    return yaml.safe_load((CHART_DIR / "ci" / f"{case}-values.yaml").read_text()) or {}
