"""Issue 13 in the cluster: no exposure without keys, engines behind a key and a NetworkPolicy, and the
gateway's config carrying the engines' own limits and the shared rate-limit URL."""

from __future__ import annotations

import helm_python
import pytest
from helm_release import PREFIX, ROOT, engine_args, load_gateway_config

from serving.config import ServingConfig

ENGINE_KEY_ENV = "LORAPLANE_ENGINE_API_KEY"
ADMIN = "9b3a91136feac4a6472d2cc9af52e9a6f9e367c1e8fcffb5a41c5c2beeaad08e"
WITH_AUTH = {
    "gateway": {"auth": {"enabled": True, "adminKeySha256": ADMIN}},
    "helmTest": {"apiKeySecret": {"name": "test-key", "key": "api-key"}},
}
EXPOSURES = [
    ({"ingress": {"enabled": True}}, "gateway.ingress.enabled is true"),
    ({"service": {"type": "LoadBalancer", "port": 80}}, "gateway.service.type is LoadBalancer"),
    ({"service": {"type": "NodePort", "port": 80}}, "gateway.service.type is NodePort"),
]


@pytest.mark.parametrize(("gateway", "named"), EXPOSURES, ids=["ingress", "loadbalancer", "nodeport"])
def test_exposure_without_auth_is_refused_naming_the_value(render, gateway, named):
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render({"gateway": gateway})
    message = str(caught.value)
    assert named in message and "gateway.auth.enabled is false" in message, message
    assert "gateway.allowUnauthenticated=true" in message, message  # the way out is named too


@pytest.mark.parametrize(("gateway", "named"), EXPOSURES, ids=["ingress", "loadbalancer", "nodeport"])
def test_exposure_renders_with_auth_or_an_explicit_opt_out(render, gateway, named):
    opted_out = render({"gateway": {**gateway, "allowUnauthenticated": True}})
    with_auth = render({**WITH_AUTH, "gateway": {**WITH_AUTH["gateway"], **gateway}})
    for release in (opted_out, with_auth):
        exposed = release.kinds("Ingress") or [
            s for s in release.kinds("Service") if s["spec"].get("type") in ("LoadBalancer", "NodePort")
        ]
        assert len(exposed) == 1


def _secret_refs(container: dict) -> set[str]:
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", []) if "valueFrom" in e}
    refs |= {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
    return refs


def test_engines_require_a_key_that_only_engines_and_gateway_get(release):
    secret = release.values["engine"]["apiKey"]["existingSecret"] or f"{PREFIX}-engine-key"
    secret_key = release.values["engine"]["apiKey"]["secretKey"]
    # VLLM_API_KEY is vLLM's --api-key read from the env (the key stays off the process list)
    expected = {"engine": {ENGINE_KEY_ENV, "VLLM_API_KEY"}, "gateway": {ENGINE_KEY_ENV}}
    holders = set()
    for doc in release.docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Pod", "Job", "CronJob"):
            continue
        spec = release.pod_spec(doc)
        assert secret not in {v.get("secret", {}).get("secretName") for v in spec.get("volumes", []) if "secret" in v}
        for container in spec["containers"] + spec.get("initContainers", []):
            if secret not in _secret_refs(container):
                continue
            holders.add((doc["metadata"]["name"], container["name"]))
            refs = [e for e in container["env"] if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret]
            assert {e["name"] for e in refs} == expected[container["name"]]
            assert {e["valueFrom"]["secretKeyRef"]["key"] for e in refs} == {secret_key}
    assert holders == {(f"{PREFIX}-engine", "engine"), (f"{PREFIX}-gateway", "gateway")}
    assert not any("api-key" in arg for arg in release.container(release.engine, "engine")["args"])


def test_offline_render_without_an_engine_key_secret_fails_naming_the_value(chart):
    """`helm template` (Argo CD, Flux) sees no cluster: a random key would change on every render."""
    for upgrade in (False, True):
        with pytest.raises(helm_python.HelmRenderError) as caught:
            chart.render({}, name="lp", namespace="ai", is_install=not upgrade, is_upgrade=upgrade)
        message = str(caught.value)
        assert "engine.apiKey.existingSecret is empty and this render sees no cluster" in message
        assert f"set engine.apiKey.existingSecret={PREFIX}-engine-key" in message
        assert f"kubectl -n ai create secret generic {PREFIX}-engine-key --from-literal=api-key=" in message


def test_engine_key_comes_from_the_existing_secret_and_renders_the_same_every_time(render):
    values = {"engine": {"apiKey": {"existingSecret": "vllm-key", "secretKey": "token"}}}
    first, again = render(values), render(values)
    assert [s["metadata"]["name"] for s in first.kinds("Secret")] == []
    assert first.templates == again.templates  # nothing random: a GitOps diff stays empty
    env = {e["name"]: e for e in first.container(first.gateway, "gateway")["env"]}
    assert env[ENGINE_KEY_ENV]["valueFrom"]["secretKeyRef"] == {"name": "vllm-key", "key": "token"}
    engine_env = {e["name"]: e for e in first.container(first.engine, "engine")["env"]}
    assert engine_env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "vllm-key", "key": "token"}


def test_helm_lint_of_the_defaults_still_passes():
    report = helm_python.lint(str(ROOT / "helm" / "loraplane"), {}, strict=True)
    assert report["errors"] == []


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist)."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _admits(policy: dict, pod: dict[str, str], namespace: dict[str, str], same_namespace: bool) -> bool:
    """Does the NetworkPolicy admit a connection from a pod (labels) in a namespace (labels)?"""
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            # a podSelector alone means pods of the policy's own namespace
            ns_ok = _selects(peer["namespaceSelector"], namespace) if "namespaceSelector" in peer else same_namespace
            if ns_ok and _selects(peer.get("podSelector", {}), pod):
                return True
    return False


def test_network_policy_admits_engine_traffic_only_from_gateway_pods_and_the_scraper(release):
    policy = release.find("NetworkPolicy", f"{PREFIX}-engine")
    engine_pod = release.engine["spec"]["template"]["metadata"]["labels"]
    assert _selects(policy["spec"]["podSelector"], engine_pod)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    engine_ports = {p["name"] for p in release.container(release.engine, "engine")["ports"]}
    for rule in policy["spec"]["ingress"]:
        assert {p["port"] for p in rule["ports"]} <= engine_ports
    own_ns = {"kubernetes.io/metadata.name": "ai"}
    gateway_pod = release.gateway["spec"]["template"]["metadata"]["labels"]
    test_pod = release.find("Pod", f"{PREFIX}-test-models")["metadata"]["labels"]
    other_release_gateway = {**gateway_pod, "app.kubernetes.io/instance": "other"}
    assert _admits(policy, gateway_pod, own_ns, same_namespace=True)
    for outsider in (test_pod, engine_pod, other_release_gateway, {"app": "curl"}):
        assert not _admits(policy, outsider, own_ns, same_namespace=True), outsider
    assert not _admits(policy, gateway_pod, {"kubernetes.io/metadata.name": "dev"}, same_namespace=False)
    scraper = release.values["networkPolicy"]["metricsScraper"]  # every case: any pod of namespace "monitoring"
    monitoring = {"kubernetes.io/metadata.name": scraper["namespace"]}
    assert _admits(policy, {"app.kubernetes.io/name": "prometheus"}, monitoring, same_namespace=False)
    assert not _admits(policy, {"app.kubernetes.io/name": "prometheus"}, {"kubernetes.io/metadata.name": "dev"}, False)


def test_network_policy_scraper_selector_is_configurable_or_absent(render):
    def scraper_peers(metrics_scraper: dict) -> list[dict]:
        release = render({"networkPolicy": {"metricsScraper": metrics_scraper}})
        return [
            peer
            for rule in release.find("NetworkPolicy", f"{PREFIX}-engine")["spec"]["ingress"][1:]
            for peer in rule["from"]
        ]

    prometheus = {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert scraper_peers({"podSelector": prometheus}) == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}, "podSelector": prometheus}
    ]
    team = {"matchLabels": {"team": "obs"}}  # replaces `namespace`, not merged with it
    assert scraper_peers({"namespaceSelector": team}) == [{"namespaceSelector": team}]
    assert scraper_peers({"namespace": "", "podSelector": prometheus}) == [{"podSelector": prometheus}]  # own namespace
    assert scraper_peers({"namespace": ""}) == []  # gateway pods only
    assert render({"networkPolicy": {"enabled": False}}).kinds("NetworkPolicy") == []


def test_engine_limits_in_the_gateway_config_agree_with_the_engine_args(release, tmp_path):
    """Every ci/*-values.yaml: the gateway refuses exactly what the engines would (issue 13)."""
    args = engine_args(release)
    cfg = load_gateway_config(release, tmp_path).engine
    assert str(cfg.max_lora_rank) == args["--max-lora-rank"]
    assert str(cfg.max_loras) == args["--max-loras"]
    assert str(cfg.max_cpu_loras) == args["--max-cpu-loras"]
    assert str(cfg.max_model_len) == args["--max-model-len"]
    assert cfg.replicas == 0  # the engines are the StatefulSet's pods, not the gateway's children


def test_rank_32_engines_make_a_rank_32_gateway(render, tmp_path):
    release = render({"engine": {"maxLoraRank": 32}})
    assert engine_args(release)["--max-lora-rank"] == "32"
    assert load_gateway_config(release, tmp_path).engine.max_lora_rank == 32


def test_the_admin_api_is_never_opened_by_the_chart(release):
    text = release.find("ConfigMap", f"{PREFIX}-gateway")["data"]["serving.yaml"]
    assert "local_dev_open_admin" not in text  # the local-development switch stays off in a cluster
    assert release.serving_yaml()["gateway"]["host"] == "0.0.0.0"


def test_auth_on_renders_an_admin_key_hash_from_the_secret(release):
    auth = release.values["gateway"]["auth"]
    if not auth["enabled"]:
        return
    secret = release.find("Secret", f"{PREFIX}-gateway-auth")
    assert f'admin_key_sha256: "{auth["adminKeySha256"]}"' in secret["stringData"][auth["secretKey"]]


REDIS = "redis://valkey.cache.svc:6379/0"


def test_redis_url_reaches_the_gateway_env_from_a_secret_or_a_value(render, releases):
    def redis_env(release) -> list[dict]:
        return [e for e in release.container(release.gateway, "gateway")["env"] if e["name"] == "LORAPLANE_REDIS_URL"]

    assert redis_env(releases["default"]) == []  # per-pod limits
    assert redis_env(render({"ratelimit": {"redisUrl": REDIS}})) == [{"name": "LORAPLANE_REDIS_URL", "value": REDIS}]
    (from_secret,) = redis_env(releases["autoscaling"])
    assert from_secret["valueFrom"]["secretKeyRef"] == {"name": "loraplane-redis", "key": "url"}
    with pytest.raises(helm_python.HelmRenderError, match="ratelimit.redisUrl and ratelimit.redisUrlSecret.name"):
        render({"ratelimit": {"redisUrl": REDIS, "redisUrlSecret": {"name": "r", "key": "url"}}})


def test_a_redis_url_with_a_password_must_come_from_a_secret(render):
    with pytest.raises(helm_python.HelmValuesError, match="at '/ratelimit/redisUrl'"):
        render({"ratelimit": {"redisUrl": "redis://:hunter2@valkey:6379/0"}})


BOUNDS = {"defaultMaxTokens": 256, "maxBodyBytes": 1_048_576, "upstreamWaitTimeoutSeconds": 2.5}
SERVING_BOUNDS = {"default_max_tokens": 256, "max_body_bytes": 1_048_576, "upstream_wait_timeout_s": 2.5}


def test_request_bounds_render_only_when_set(render, releases):
    gateway = render({"gateway": {**BOUNDS, "abKeySources": ["header", "user"]}}).serving_yaml()["gateway"]
    assert SERVING_BOUNDS.items() <= gateway.items() and gateway["ab_key_sources"] == ["header", "user"]
    default = releases["default"].serving_yaml()["gateway"]
    assert not {*SERVING_BOUNDS, "ab_key_sources"} & set(default)  # the serving defaults apply


def test_request_bounds_load_with_the_serving_config(render, tmp_path):
    """Needs the serving side's gateway.* bounds (harden's branch)."""
    release = render({"gateway": {**BOUNDS, "abKeySources": ["header", "user"]}})
    cfg = load_gateway_config(release, tmp_path).gateway
    assert (cfg.default_max_tokens, cfg.max_body_bytes, cfg.upstream_wait_timeout_s) == tuple(SERVING_BOUNDS.values())
    assert list(cfg.ab_key_sources) == ["header", "user"]


def test_serving_reads_the_env_names_the_chart_sets(releases):
    """A contract with the serving side: the chart's env names are the ones serving/ reads
    (LORAPLANE_REDIS_URL and LORAPLANE_ENGINE_API_KEY land with harden's branch)."""
    release = releases["autoscaling"]
    env = {e["name"] for e in release.container(release.gateway, "gateway")["env"]}
    assert {"LORAPLANE_STORE_URL", "LORAPLANE_REDIS_URL", ENGINE_KEY_ENV} <= env
    serving_source = "\n".join(path.read_text() for path in (ROOT / "serving").rglob("*.py"))
    missing = [name for name in ("LORAPLANE_REDIS_URL", ENGINE_KEY_ENV) if name not in serving_source]
    assert missing == [], f"serving/ does not read {missing}"
    assert "redis_url" in ServingConfig.model_fields["ratelimit"].annotation.model_fields


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gateway": {"maxTokensLimit": 2048}, "engine": {"maxModelLen": 2048}}, "gateway.maxTokensLimit (2048)"),
        ({"gateway": {"defaultMaxTokens": 2000}}, "gateway.defaultMaxTokens (2000) is above"),
        ({"gateway": {"auth": {"enabled": True, "adminKeySha256": ADMIN}}}, "helmTest.apiKeySecret.name is empty"),
    ],
    ids=["max-tokens-vs-context", "default-vs-limit", "helm-test-key"],
)
def test_inconsistent_limits_fail_the_render_naming_the_value(render, values, message):
    with pytest.raises(helm_python.HelmRenderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render(values)
