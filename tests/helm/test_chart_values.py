"""values.yaml and values.schema.json: bad input is refused by Helm itself, naming the key."""

from __future__ import annotations

import json
import re

import helm_python
import jsonschema
import pytest
import yaml
from helm_release import CASES, CHART_DIR, case_values, with_offline_engine_key

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART_DIR / "values.yaml").read_text())


def experiment(name: str, variants: dict, **extra) -> dict:
    return {"experiments": [{"name": name, "variants": variants, **extra}]}


# (values, JSON pointer Helm names, words its message must contain)
BAD_VALUES = [
    ({"engine": {"gpu": {"count": "one"}}}, "/engine/gpu/count", "want integer"),
    ({"engine": {"gpuCount": 1}}, "/engine", "'gpuCount' not allowed"),
    ({"replicaCount": 3}, "", "'replicaCount' not allowed"),
    ({"engine": {"quantization": "int3"}}, "/engine/quantization", "must be one of"),
    ({"engine": {"maxLoraRank": 24}}, "/engine/maxLoraRank", "must be one of 1, 8, 16"),
    ({"engine": {"autoscaling": {"mode": "vpa"}}}, "/engine/autoscaling/mode", "must be one of"),
    ({"engine": {"shmSize": "lots"}}, "/engine/shmSize", "lots"),
    ({"adapters": {"source": "gcs"}}, "/adapters/source", "must be one of"),
    (experiment("demo-json", {"demo-json@2": 10}), "/experiments/0/variants", "'demo-json@2' not allowed"),
    (experiment("demo-json", {"demo-json@v1": -5}), "/experiments/0/variants/demo-json@v1", "got -5"),
    (experiment("Demo JSON", {"demo-json@v1": 1}), "/experiments/0/name", "Demo"),
    (experiment("x", {"x@v1": 1}, weight=1), "/experiments/0", "'weight'"),
    ({"gateway": {"auth": {"keys": [{"name": "a", "sha256": "abc"}]}}}, "/gateway/auth/keys/0/sha256", "abc"),
    ({"gateway": {"auth": {"keys": [{"name": "a", "sha": "0" * 64}]}}}, "/gateway/auth/keys/0", "'sha'"),
    ({"gateway": {"replicas": 1.5}}, "/gateway/replicas", "want integer"),
    ({"engine": {"replicas": 0}}, "/engine/replicas", "minimum: got 0, want 1"),
    ({"ratelimit": {"redisUrl": "redis://:pw@h:6379"}}, "/ratelimit/redisUrl", "does not match pattern"),
    ({"gateway": {"abKeySources": ["ip"]}}, "/gateway/abKeySources/0", "must be one of 'user', 'header'"),
    ({"gateway": {"maxBodyBytes": 100}}, "/gateway/maxBodyBytes", "minimum: got 100, want 1,024"),
    ({"store": {"urlSecret": {"name": "pg", "key": ""}}}, "/store/urlSecret/key", "minLength"),
    (
        {"networkPolicy": {"metricsScraper": {"namespace": "Bad NS"}}},
        "/networkPolicy/metricsScraper/namespace",
        "Bad NS",
    ),
    ({"engine": {"apiKey": {"secretKey": "a b"}}}, "/engine/apiKey/secretKey", "a b"),
    ({"engine": {"toolCallParser": "Hermes 2"}}, "/engine/toolCallParser", "does not match pattern"),
    ({"cache": {"ttlSeconds": 0}}, "/cache/ttlSeconds", "exclusiveMinimum"),
    ({"cache": {"redisUrl": "redis://:pw@h:6379"}}, "/cache/redisUrl", "does not match pattern"),
    ({"budgets": {"redisUrl": "http://h"}}, "/budgets/redisUrl", "does not match pattern"),
    (
        {"gateway": {"auth": {"keys": [{"name": "a", "sha256": "0" * 64, "budgets": {"tokensPerDay": 0}}]}}},
        "/gateway/auth/keys/0/budgets/tokensPerDay",
        "minimum: got 0, want 1",
    ),
    (
        {"gateway": {"auth": {"keys": [{"name": "a", "sha256": "0" * 64, "budgets": {"perDay": 5}}]}}},
        "/gateway/auth/keys/0/budgets",
        "'perDay' not allowed",
    ),
]


@pytest.mark.parametrize(("values", "pointer", "words"), BAD_VALUES, ids=[b[1] or "top" for b in BAD_VALUES])
def test_helm_refuses_bad_values_naming_the_key(render, values, pointer, words):
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render(values)
    message = str(caught.value)
    assert f"at '{pointer}'" in message, message  # Helm names the key by its JSON pointer
    assert words in message, message


@pytest.mark.parametrize(("values", "pointer", "words"), BAD_VALUES, ids=[b[1] or "top" for b in BAD_VALUES])
def test_jsonschema_agrees_with_helm(chart, values, pointer, words):
    """Other tools (editors, kubeconform) read the same schema with a standard validator."""
    merged = chart.merge_values(values)
    errors = list(jsonschema.Draft7Validator(SCHEMA).iter_errors(merged))
    assert errors, f"jsonschema accepted {values}"
    assert any("/".join(["", *map(str, e.absolute_path)]) == pointer for e in errors), errors


def test_schema_is_valid_draft7_and_accepts_every_shipped_values_file():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    for case in CASES:
        jsonschema.Draft7Validator(SCHEMA).validate(_merge(DEFAULTS, case_values(case)))


def test_every_object_in_the_schema_is_closed_or_a_free_form_kubernetes_field():
    free_form = {
        "commonLabels", "podSecurityContext", "containerSecurityContext", "env", "nodeSelector",
        "affinity", "podAnnotations", "annotations", "labels", "requests", "limits", "seccompProfile",
        "tolerations[]", "namespaceSelector", "podSelector", "perModel",
        "spec", "files",  # loop.spec is checked by the loop's own typed spec (loraplane/loop/spec.py)
    }  # fmt: skip

    def walk(node: dict, name: str) -> None:
        if node.get("type") == "object" and name not in free_form:
            assert node.get("additionalProperties") is False, f"{name} is open"
        for key, child in node.get("properties", {}).items():
            walk(child, key)
        if isinstance(node.get("items"), dict):
            walk(node["items"], name + "[]")

    walk(SCHEMA, "<top>")


def test_every_schema_key_has_a_default_in_values_yaml():
    def walk(schema: dict, values: dict, where: str) -> None:
        for key, child in schema.get("properties", {}).items():
            assert key in values, f"{where}{key} is in values.schema.json but not in values.yaml"
            if "properties" in child and child.get("type") == "object":
                walk(child, values[key], f"{where}{key}.")

    walk(SCHEMA, DEFAULTS, "")


def test_values_yaml_documents_every_key():
    """Every key the chart defines has a comment above it (or inline); data inside free-form maps
    (resources.requests.cpu, labels) is exempt."""
    key_line = re.compile(r"^( *)([A-Za-z0-9_./\"-]+):")
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    parents: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    undocumented = []
    for number, line in enumerate(lines):
        match = key_line.match(line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        parents = [(i, k) for i, k in parents if i < indent]
        path = [k for _, k in parents] + [key]
        parents.append((indent, key))
        if _schema_node(path) is None or " # " in line:
            continue
        previous = next((p.strip() for p in reversed(lines[:number]) if p.strip()), "")
        if not previous.startswith("#"):
            undocumented.append(f"{number + 1}: {'.'.join(path)}")
    assert undocumented == []


def _schema_node(path: list[str]) -> dict | None:
    node = SCHEMA
    for key in path:
        node = node.get("properties", {}).get(key)
        if node is None:
            return None
    return node


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


# Rules between values that the schema cannot express; the chart fails the render (templates/validate.yaml).
CROSS_FIELD = [
    ({"engine": {"maxLoras": 8, "maxCpuLoras": 4}}, "engine.maxCpuLoras (4) must be >= engine.maxLoras (8)"),
    ({"engine": {"autoscaling": {"minReplicas": 5, "maxReplicas": 4}}}, "engine.autoscaling.minReplicas (5)"),
    ({"gateway": {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}}, "gateway.autoscaling.minReplicas (3)"),
    (experiment("demo-ab", {"demo-json@v1": 0, "demo-json@v2": 0}), 'experiment "demo-ab": variant weights sum'),
    (
        experiment("demo-json", {"demo-json@v1": 90, "demo-json@v2": 10}),
        'experiment "demo-json" has the name of adapter',
    ),
    (experiment("smollm2-135m-instruct", {"a@v1": 1}), 'experiment "smollm2-135m-instruct" has the name of the base'),
    (
        {"experiments": [{"name": "a", "variants": {"b@v1": 1}}, {"name": "b", "variants": {"c@v1": 1}}]},
        'experiment "b" has the name of adapter "b"',
    ),
    (
        {"experiments": [{"name": "a", "variants": {"a@v1": 1}}, {"name": "a", "variants": {"a@v2": 1}}]},
        'experiment "a" is defined twice',
    ),
]


@pytest.mark.parametrize(("values", "message"), CROSS_FIELD, ids=[m.split(" ")[0] for _, m in CROSS_FIELD])
def test_inconsistent_values_fail_the_render_with_a_message(render, values, message):
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render(values)


def test_packaged_chart_keeps_the_files_its_templates_read(tmp_path):
    """.helmignore must not drop files/ or dashboards/: render the packaged archive, not the directory."""
    archive = helm_python.package(str(CHART_DIR), destination=str(tmp_path))
    with helm_python.Chart.load(archive) as packaged:
        names = {f["name"] for f in packaged.files}
        assert {"files/adapter-sync.sh", "files/engine_key_guard.py", "dashboards/loraplane.json"} <= names
        assert not any(name.startswith("ci/") for name in names)
        rendered = packaged.render(with_offline_engine_key(case_values("keda-s3-auth")), name="lp", namespace="ai")
    script = yaml.safe_load(rendered["loraplane/templates/adapter-sync-configmap.yaml"])["data"]["adapter-sync.sh"]
    assert script.startswith("#!/bin/sh") and "rclone lsf" in script
