"""The gateway: its rendered config must load with serving.config.load_config and match the values."""

from __future__ import annotations

from pathlib import Path

import helm_python
import pytest
import yaml
from helm_release import PREFIX, gateway_config_files, load_gateway_config

from serving.config import load_config

ROLLOUT_SET_JSON = 'experiments=[{"name":"demo-json-ab","variants":{"demo-json@v1":90,"demo-json@v2":10}}]'


def test_rendered_config_loads_with_the_serving_schema(release, tmp_path):
    cfg = load_gateway_config(release, tmp_path)
    values = release.values
    assert cfg.base == values["base"]["name"]
    assert (cfg.gateway.host, cfg.gateway.port) == ("0.0.0.0", values["gateway"]["port"])
    assert cfg.gateway.connect_timeout_s == values["gateway"]["connectTimeoutSeconds"]
    assert cfg.gateway.read_timeout_s == values["gateway"]["readTimeoutSeconds"]
    assert cfg.gateway.max_in_flight == values["gateway"]["maxInFlight"]
    assert cfg.gateway.max_tokens_limit == values["gateway"]["maxTokensLimit"]
    assert cfg.engine.replicas == 0
    assert cfg.auth.enabled == values["gateway"]["auth"]["enabled"]


def test_experiment_weights_match_values(release, tmp_path):
    cfg = load_gateway_config(release, tmp_path)
    expected = {e["name"]: e["variants"] for e in release.values["experiments"]}
    assert {e.name: e.variants for e in cfg.experiments} == expected


def test_gpu_case_rolls_ten_percent_to_v2(releases, tmp_path):
    cfg = load_gateway_config(releases["gpu"], tmp_path)
    (experiment,) = cfg.experiments
    assert experiment.variants == {"demo-json@v1": 90, "demo-json@v2": 10}


def test_readme_rollout_command_sets_ninety_ten(render, tmp_path):
    """`helm upgrade ... --set-json '<ROLLOUT_SET_JSON>'`, parsed by Helm's own --set-json parser."""
    readme = (Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md").read_text()
    assert f"--set-json '{ROLLOUT_SET_JSON}'" in readme
    release = render(helm_python.parse_set_json(ROLLOUT_SET_JSON))
    cfg = load_gateway_config(release, tmp_path)
    assert cfg.experiments[0].variants == {"demo-json@v1": 90, "demo-json@v2": 10}


def test_engines_are_one_url_per_engine_pod_through_the_headless_service(release, tmp_path):
    cfg = load_gateway_config(release, tmp_path)
    scaling = release.values["engine"]["autoscaling"]
    count = scaling["maxReplicas"] if scaling["enabled"] else release.values["engine"]["replicas"]
    service = release.find("Service", f"{PREFIX}-engine")
    port = service["spec"]["ports"][0]["port"]
    pods = [f"{release.engine['metadata']['name']}-{i}" for i in range(count)]  # StatefulSet pod names
    assert cfg.engines == [f"http://{pod}.{service['metadata']['name']}:{port}" for pod in pods]


def test_explicit_engine_urls_replace_the_pod_list(render, tmp_path):
    release = render({"gateway": {"engineUrls": ["http://vllm.other-ns.svc:8000"]}})
    assert load_gateway_config(release, tmp_path).engines == ["http://vllm.other-ns.svc:8000"]


def test_registry_paths_are_where_gateway_and_engines_mount_the_volumes(release, tmp_path):
    cfg = load_gateway_config(release, tmp_path)
    gateway_mounts = {m["name"]: m for m in release.container(release.gateway, "gateway")["volumeMounts"]}
    engine_mounts = {m["name"]: m for m in release.container(release.engine, "engine")["volumeMounts"]}
    assert str(cfg.registry.adapters_dir) == gateway_mounts["adapters"]["mountPath"]
    assert str(cfg.registry.models_dir) == gateway_mounts["models"]["mountPath"]
    assert str(cfg.engine_adapters_dir) == engine_mounts["adapters"]["mountPath"]
    assert gateway_mounts["adapters"]["readOnly"] and gateway_mounts["models"]["readOnly"]
    # the gateway and the engines read the same volume (PVC) or sync the same source (s3)
    gateway_volumes = {v["name"]: v for v in release.pod_spec(release.gateway)["volumes"]}
    engine_volumes = {v["name"]: v for v in release.pod_spec(release.engine)["volumes"]}
    assert gateway_volumes["adapters"] == engine_volumes["adapters"]
    assert gateway_volumes["models"] == engine_volumes["models"]


def test_gateway_container_command_ports_and_probes(release):
    container = release.container(release.gateway, "gateway")
    assert container["command"] == ["loraplane"]
    assert container["args"][:4] == ["serve", "--gateway-only", "--config", "/etc/loraplane/serving.yaml"]
    port = release.values["gateway"]["port"]
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "http"}
    service = release.find("Service", f"{PREFIX}-gateway")
    assert service["spec"]["ports"][0]["port"] == release.values["gateway"]["service"]["port"]


def test_auth_hashes_come_from_a_secret_layered_as_a_second_config(releases, tmp_path):
    release = releases["keda-s3-auth"]
    auth = release.values["gateway"]["auth"]
    files = gateway_config_files(release, tmp_path)
    assert len(files) == 2
    assert "sha256" not in files[0].read_text()  # the ConfigMap carries no key hashes
    cfg = load_config(files)
    assert cfg.auth.enabled is True
    assert cfg.auth.admin_key_sha256 == auth["adminKeySha256"]
    assert [(k.name, k.sha256, k.models, k.rate_limit_per_minute) for k in cfg.auth.keys] == [
        ("team-a", auth["keys"][0]["sha256"], ["demo-json", "demo-json-ab"], 600),
        ("ops", auth["keys"][1]["sha256"], ["*"], 0),
    ]


def test_existing_auth_secret_is_mounted_and_not_rendered(render):
    auth = {"enabled": True, "existingSecret": "prod-keys", "secretKey": "keys.yaml"}
    release = render({"gateway": {"auth": auth}, "helmTest": {"enabled": False}})
    assert [s["metadata"]["name"] for s in release.kinds("Secret")] == []  # the engine key: an existing Secret
    container = release.container(release.gateway, "gateway")
    assert container["args"][-2:] == ["--config", "/etc/loraplane/secret/keys.yaml"]
    volumes = {v["name"]: v for v in release.pod_spec(release.gateway)["volumes"]}
    assert volumes["auth"]["secret"]["secretName"] == "prod-keys"


def test_auth_without_an_admin_key_is_refused_at_render(render):
    """Closed by default: with auth on, the admin API needs a key, so the chart wants its hash."""
    keys = [{"name": "team", "sha256": "0" * 64}]
    with pytest.raises(helm_python.HelmError, match=r"gateway.auth.adminKeySha256 is empty"):
        render({"gateway": {"auth": {"enabled": True, "keys": keys}}, "helmTest": {"enabled": False}})


def test_changed_weights_roll_the_gateway_pods(render):
    def checksum(weights: dict[str, int]) -> str:
        release = render({"experiments": [{"name": "demo-json-ab", "variants": weights}]})
        return release.gateway["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({"demo-json@v1": 90, "demo-json@v2": 10}) != checksum({"demo-json@v1": 50, "demo-json@v2": 50})


def test_gateway_hpa_ingress_and_pdb(releases):
    release = releases["autoscaling"]
    assert "replicas" not in release.gateway["spec"]
    hpa = release.find("HorizontalPodAutoscaler", f"{PREFIX}-gateway")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}
    ingress = release.find("Ingress", f"{PREFIX}-gateway")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "llm.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": f"{PREFIX}-gateway", "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [{"hosts": ["llm.example.com"], "secretName": "llm-example-com-tls"}]
    assert release.find("PodDisruptionBudget", f"{PREFIX}-gateway")["spec"]["minAvailable"] == 1
    default = releases["default"]
    assert default.kinds("Ingress") == [] and default.gateway["spec"]["replicas"] == 1
    # one gateway pod: no gateway PDB (minAvailable 1 of 1 would block every node drain)
    assert [pdb["metadata"]["name"] for pdb in default.kinds("PodDisruptionBudget")] == [f"{PREFIX}-engine"]


def test_rendered_config_file_is_plain_yaml_with_no_unset_values(release):
    text = release.find("ConfigMap", f"{PREFIX}-gateway")["data"]["serving.yaml"]
    assert "<no value>" not in text and "null" not in text
    assert set(yaml.safe_load(text)) == {
        "base",
        "gateway",
        "registry",
        "engine",
        "engines",
        "experiments",
        "auth",
        "store",
        "rollouts",
    }
