"""Every rendered manifest, in every values case: Kubernetes schemas (strict), yamllint, labels, security."""

from __future__ import annotations

import json

import helm_python
import kubernetes_validate
import pytest
import yaml
from helm_release import CASES, CHART_DIR, POD_KINDS, PREFIX, case_values
from kubernetes_validate import utils as kv_utils
from yamllint import linter
from yamllint.config import YamlLintConfig

# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.25.0", kv_utils.latest_version()]
# Custom resources: no schema is bundled; their shape is asserted in test_chart_engine/test_chart_render.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}

# Rendered manifests are machine output: long lines (JSON, PromQL) are fine, and Helm's toYaml writes
# block sequences unindented; everything else in the default rule set (duplicate keys, indentation,
# trailing spaces, blank lines, truthy values) is an error.
YAMLLINT = YamlLintConfig(
    "extends: default\nrules:\n  line-length: disable\n  document-start: disable\n"
    "  indentation: {spaces: consistent, indent-sequences: whatever}\n"
)
CHART_VERSION = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["version"]
STANDARD_LABELS = {
    "app.kubernetes.io/name": "loraplane",
    "app.kubernetes.io/instance": "lp",
    "app.kubernetes.io/managed-by": "Helm",
    "app.kubernetes.io/part-of": "loraplane",
}


@pytest.mark.parametrize("case", CASES)
def test_lint_strict_reports_no_warnings_or_errors(case):
    report = helm_python.lint(str(CHART_DIR), case_values(case), strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(release, kube_version):
    for doc in release.docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{release.case}: {doc['kind']}/{doc['metadata']['name']} {where}: {exc.message}")


def test_only_known_custom_resources_are_rendered(release):
    kinds = {(d["apiVersion"], d["kind"]) for d in release.docs}
    unknown = []
    for api_version, kind in kinds - CRD_KINDS:
        try:
            kubernetes_validate.validate({"apiVersion": api_version, "kind": kind}, "1.30.0")
        except kubernetes_validate.SchemaNotFoundError:
            unknown.append(kind)
        except kubernetes_validate.ValidationError:
            pass  # the schema exists (the empty object is just invalid)
    assert unknown == []


def test_rendered_yaml_passes_yamllint(release):
    for path, text in release.templates.items():
        if not path.endswith(".yaml") or not text.strip():
            continue
        problems = [f"{p.line}: {p.message}" for p in linter.run(text, YAMLLINT)]
        assert problems == [], f"{release.case}: {path}: {problems}"


def test_every_resource_has_standard_labels_and_a_prefixed_name(release):
    for doc in release.docs:
        meta = doc["metadata"]
        assert meta["name"].startswith(PREFIX) and len(meta["name"]) <= 63, meta["name"]
        labels = meta.get("labels", {})
        assert STANDARD_LABELS.items() <= labels.items(), f"{doc['kind']}/{meta['name']}: {labels}"
        assert labels["helm.sh/chart"] == f"loraplane-{CHART_VERSION}"


def test_selectors_match_their_pod_templates_and_services_find_pods(release):
    pods = {d["metadata"]["name"]: d for d in release.docs if d["kind"] in ("Deployment", "StatefulSet")}
    for doc in pods.values():
        selector = doc["spec"]["selector"]["matchLabels"]
        assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
    for service in release.kinds("Service"):
        target = pods[service["metadata"]["name"]]  # each Service is named after its workload
        assert service["spec"]["selector"] == target["spec"]["selector"]["matchLabels"]
        containers = target["spec"]["template"]["spec"]["containers"]
        container_ports = {p["name"] for c in containers for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    for pdb in release.kinds("PodDisruptionBudget"):
        assert pdb["spec"]["selector"] == pods[pdb["metadata"]["name"]]["spec"]["selector"]


def test_every_pod_runs_non_root_with_seccomp_and_no_capabilities(release):
    workloads = [d for d in release.docs if d["kind"] in POD_KINDS]
    assert len(workloads) >= 2
    for doc in workloads:
        spec = release.pod_spec(doc)
        name = doc["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            assert ctx["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert ctx["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert "add" not in ctx["capabilities"], (name, container["name"])


def test_read_only_root_filesystem_leaves_writable_tmp_and_caches(release):
    engine_mounts = {m["mountPath"] for m in release.container(release.engine, "engine")["volumeMounts"]}
    assert {"/tmp", "/cache", "/dev/shm"} <= engine_mounts
    gateway_mounts = {m["mountPath"] for m in release.container(release.gateway, "gateway")["volumeMounts"]}
    assert "/tmp" in gateway_mounts


def test_helm_test_hook_lists_models_through_the_gateway_service(release):
    pod = release.find("Pod", f"{PREFIX}-test-models")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    port = release.values["gateway"]["service"]["port"]
    assert env["GATEWAY_URL"]["value"] == f"http://{PREFIX}-gateway:{port}"
    assert "/v1/models" in container["args"][0]
    expected = [release.values["base"]["name"]] + [e["name"] for e in release.values["experiments"]]
    assert env["EXPECTED_MODELS"]["value"] == json.dumps(expected, separators=(",", ":"))
    key_secret = release.values["helmTest"]["apiKeySecret"]["name"]
    assert ("API_KEY" in env) == bool(key_secret)
    compile(container["args"][0], "helm-test", "exec")  # the embedded check is valid Python


def test_service_monitor_scrapes_metrics_of_gateway_and_engines(release):
    monitors = release.kinds("ServiceMonitor")
    assert len(monitors) == int(release.values["metrics"]["serviceMonitor"]["enabled"])
    for monitor in monitors:
        spec = monitor["spec"]
        assert spec["endpoints"][0] == {
            "port": "http",
            "path": "/metrics",
            "interval": release.values["metrics"]["serviceMonitor"]["interval"],
            "scrapeTimeout": release.values["metrics"]["serviceMonitor"]["scrapeTimeout"],
        }
        assert spec["selector"]["matchExpressions"][0]["values"] == ["gateway", "engine"]
        for service in release.kinds("Service"):  # both Services match the selector
            labels = service["metadata"]["labels"]
            assert spec["selector"]["matchLabels"].items() <= labels.items()
            assert labels["app.kubernetes.io/component"] in ("gateway", "engine")
        assert release.values["metrics"]["serviceMonitor"]["labels"].items() <= monitor["metadata"]["labels"].items()


def test_notes_tell_how_to_reach_the_gateway_and_show_experiments(releases):
    notes = releases["gpu"].templates["loraplane/templates/NOTES.txt"]
    assert f"port-forward svc/{PREFIX}-gateway 8000:80" in notes
    assert 'Experiment "demo-json-ab": demo-json@v1=90 demo-json@v2=10' in notes
    assert "startup budget:\n1800 s" in notes
    assert "Authorization: Bearer" in releases["keda-s3-auth"].templates["loraplane/templates/NOTES.txt"]
