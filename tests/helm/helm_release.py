"""A rendered release of helm/loraplane and where the chart lives (shared by tests/helm).

A case is the chart's defaults ("default") or one of helm/loraplane/ci/*-values.yaml ("gpu", ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from serving.config import ServingConfig, load_config

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


OFFLINE_ENGINE_KEY = f"{PREFIX}-engine-key"  # the engine key Secret an offline render names (conftest.render)


def with_offline_engine_key(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with engine.apiKey.existingSecret set, unless they set it themselves."""
    api_key = (values.get("engine") or {}).get("apiKey") or {}
    if "existingSecret" in api_key:
        return values
    engine = {**(values.get("engine") or {}), "apiKey": {**api_key, "existingSecret": OFFLINE_ENGINE_KEY}}
    return {**values, "engine": engine}


def case_values(case: str) -> dict[str, Any]:
    if case == "default":
        return {}
    return yaml.safe_load((CHART_DIR / "ci" / f"{case}-values.yaml").read_text()) or {}


def engine_args(release) -> dict[str, str | None]:
    """--flag=value -> {flag: value}; a bare --flag -> {flag: None}."""
    args = release.container(release.engine, "engine")["args"]
    parsed: dict[str, str | None] = {}
    for arg in args:
        flag, _, value = arg.partition("=")
        parsed[flag] = value or None
    return parsed


def gateway_config_files(release, tmp_path: Path) -> list[Path]:
    """The files the gateway container gets, in its --config order, written where the test can read them."""
    container = release.container(release.gateway, "gateway")
    args = container["args"]
    config_paths = [args[i + 1] for i, arg in enumerate(args) if arg == "--config"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in release.pod_spec(release.gateway)["volumes"]}
    files = []
    for index, path in enumerate(config_paths):
        directory, _, key = path.rpartition("/")
        volume = volumes[mounts[directory]]  # the path lies in a mounted ConfigMap or Secret
        if "configMap" in volume:
            data = release.find("ConfigMap", volume["configMap"]["name"])["data"]
        else:
            data = release.find("Secret", volume["secret"]["secretName"])["stringData"]
            assert volume["secret"]["items"] == [{"key": key, "path": key}]
        local = tmp_path / f"{index}-{key}"
        local.write_text(data[key])
        files.append(local)
    return files


def load_gateway_config(release, tmp_path: Path) -> ServingConfig:
    return load_config(gateway_config_files(release, tmp_path))
