"""The vLLM engine StatefulSet: vLLM flags, GPUs, probes, volumes, scheduling and autoscaling."""

from __future__ import annotations

from helm_release import PREFIX, engine_args


def test_vllm_serves_the_base_from_the_model_volume_with_lora_enabled(release):
    engine = release.values["engine"]
    base = release.values["base"]["name"]
    container = release.container(release.engine, "engine")
    assert container["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = engine_args(release)
    assert args["--model"] == f"/models/{base}"
    assert args["--served-model-name"] == base
    assert "--enable-lora" in args and args["--enable-lora"] is None
    assert args["--max-loras"] == str(engine["maxLoras"])
    assert args["--max-lora-rank"] == str(engine["maxLoraRank"])
    assert args["--max-cpu-loras"] == str(engine["maxCpuLoras"])
    assert args["--max-model-len"] == str(engine["maxModelLen"])
    assert args["--dtype"] == engine["dtype"]
    assert args["--port"] == str(engine["port"])
    assert container["args"][len(container["args"]) - len(engine["extraArgs"]) :] == engine["extraArgs"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert {k: str(v) for k, v in engine["env"].items()}.items() <= env.items()


def test_quantized_base_passes_quantization_only_when_set(releases):
    assert engine_args(releases["quantized"])["--quantization"] == "awq_marlin"
    assert engine_args(releases["quantized"])["--dtype"] == "float16"
    for case in ("default", "gpu", "cpu-only"):
        assert "--quantization" not in engine_args(releases[case])


def test_gpus_are_requested_and_limited_per_engine_pod(release):
    gpu = release.values["engine"]["gpu"]
    resources = release.container(release.engine, "engine")["resources"]
    args = engine_args(release)
    if gpu["count"] == 0:
        assert gpu["resourceName"] not in resources["limits"]
        assert gpu["resourceName"] not in resources.get("requests", {})
        assert "--gpu-memory-utilization" not in args
    else:
        assert resources["limits"][gpu["resourceName"]] == gpu["count"]
        assert resources["requests"][gpu["resourceName"]] == gpu["count"]
        assert args["--gpu-memory-utilization"] == str(release.values["engine"]["gpuMemoryUtilization"])
    assert resources["limits"]["memory"] == release.values["engine"]["resources"]["limits"]["memory"]


def test_cpu_only_case_has_no_gpu_and_a_cpu_image(releases):
    release = releases["cpu-only"]
    container = release.container(release.engine, "engine")
    assert container["image"].startswith("loraplane/engine-cpu:")
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert "--kv-cache-memory-bytes=2147483648" in container["args"]
    assert "runtimeClassName" not in release.pod_spec(release.engine)
    # Guaranteed QoS (whole CPUs, requests == limits) and vLLM's thread binding over all of them.
    assert container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"] == "4"
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "auto" and env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


def test_several_gpus_per_pod_shard_the_model_with_tensor_parallelism(render):
    release = render({"engine": {"gpu": {"count": 4}}})
    assert engine_args(release)["--tensor-parallel-size"] == "4"
    assert release.container(release.engine, "engine")["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert "--tensor-parallel-size" not in engine_args(render({}))


def test_probes_hit_health_and_startup_allows_a_long_model_load(release):
    container = release.container(release.engine, "engine")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    startup = container["startupProbe"]
    budget_s = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget_s >= 600, f"{release.case}: {budget_s} s is too short to load a model"
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] < budget_s
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_volumes_shm_models_and_adapters_are_mounted(release):
    spec = release.pod_spec(release.engine)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in release.container(release.engine, "engine")["volumeMounts"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": release.values["engine"]["shmSize"]}
    assert mounts["/dev/shm"]["name"] == "dshm"
    assert mounts["/models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
    assert mounts["/adapters"] == {"name": "adapters", "mountPath": "/adapters", "readOnly": True}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": f"{PREFIX}-models", "readOnly": True}
    if release.values["adapters"]["source"] == "volume":
        claim = volumes["adapters"]["persistentVolumeClaim"]
        assert claim == {"claimName": f"{PREFIX}-adapters", "readOnly": True}
        assert "initContainers" not in spec
    else:
        assert "emptyDir" in volumes["adapters"]


def test_created_claims_are_kept_on_uninstall_and_existing_claims_are_used(render):
    release = render({})
    claims = {c["metadata"]["name"]: c for c in release.kinds("PersistentVolumeClaim")}
    assert set(claims) == {f"{PREFIX}-models", f"{PREFIX}-adapters", f"{PREFIX}-store"}
    for claim in claims.values():
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    existing = render(
        {
            "models": {"existingClaim": "llm-weights"},
            "adapters": {"existingClaim": "registry"},
            "store": {"sqlite": {"existingClaim": "control-plane"}},
        }
    )
    assert existing.kinds("PersistentVolumeClaim") == []
    volumes = {v["name"]: v for v in existing.pod_spec(existing.engine)["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "llm-weights"
    assert volumes["adapters"]["persistentVolumeClaim"]["claimName"] == "registry"
    gateway_volumes = {v["name"]: v for v in existing.pod_spec(existing.gateway)["volumes"]}
    assert gateway_volumes["adapters"]["persistentVolumeClaim"]["claimName"] == "registry"
    assert gateway_volumes["store"]["persistentVolumeClaim"]["claimName"] == "control-plane"


def test_gpu_scheduling_values_reach_the_pod(releases):
    release = releases["gpu"]
    spec = release.pod_spec(release.engine)
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert release.engine["spec"]["replicas"] == 2
    default = releases["default"]
    assert "runtimeClassName" not in default.pod_spec(default.engine)


def test_engine_is_a_statefulset_behind_a_headless_service(release):
    service = release.find("Service", f"{PREFIX}-engine")
    assert service["spec"]["clusterIP"] == "None"
    assert release.engine["spec"]["serviceName"] == f"{PREFIX}-engine"
    assert release.engine["spec"]["podManagementPolicy"] == "Parallel"


def test_hpa_scales_engines_on_waiting_requests_and_owns_replicas(releases):
    release = releases["autoscaling"]
    scaling = release.values["engine"]["autoscaling"]
    assert "replicas" not in release.engine["spec"]  # the HPA owns it; helm upgrade must not reset it
    hpa = release.find("HorizontalPodAutoscaler", f"{PREFIX}-engine")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": f"{PREFIX}-engine"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (scaling["minReplicas"], scaling["maxReplicas"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == scaling["hpa"]["metricName"]
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": str(scaling["targetWaitingRequests"])}
    assert release.kinds("ScaledObject") == []


def test_keda_scaled_object_queries_the_engine_pods_queue(releases):
    release = releases["keda-s3-auth"]
    scaling = release.values["engine"]["autoscaling"]
    assert release.kinds("HorizontalPodAutoscaler") == []  # KEDA creates its own
    assert "replicas" not in release.engine["spec"]
    scaled = release.find("ScaledObject", f"{PREFIX}-engine")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": f"{PREFIX}-engine"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (scaling["minReplicas"], scaling["maxReplicas"])
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    metadata = trigger["metadata"]
    assert all(isinstance(v, str) for v in metadata.values())  # the CRD types trigger metadata as strings
    assert metadata["threshold"] == "2.5"
    assert metadata["query"] == 'sum(vllm:num_requests_waiting{namespace="ai",pod=~"lp-loraplane-engine-[0-9]+"})'


def test_no_autoscaler_without_the_flag(releases):
    for case in ("default", "gpu", "cpu-only", "quantized"):
        release = releases[case]
        assert release.kinds("HorizontalPodAutoscaler") == [] and release.kinds("ScaledObject") == []
        assert release.engine["spec"]["replicas"] == release.values["engine"]["replicas"]
