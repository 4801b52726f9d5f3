"""The optional `loraplane loop` CronJob (templates/loop-cronjob.yaml): off by default; on, it runs
`loraplane loop run` with the spec the values give (its gateway URL, registry paths and work dir set
by the chart, so it passes the loop's own spec validation), the adapter PVC read-write, the models
PVC read-only, the store URL and the admin key from their Secrets; values it cannot run without
fail the render naming the value."""

from __future__ import annotations

from pathlib import Path

import helm_python
import pytest
import yaml
from helm_release import PREFIX

from loraplane.loop.spec import LoopSpec

GOLDEN = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
ON = {
    "store": {"urlSecret": {"name": "pg", "key": "url"}},
    "loop": {
        "enabled": True,
        "adminKeySecret": {"name": "admin"},
        "spec": {
            "adapter": "bot",
            "train": {"config": "/etc/loraplane-loop/train.yaml", "overrides": {"train.max_steps": 40}},
            "gate": {"golden": "/etc/loraplane-loop/golden.jsonl", "margin": 0.02},
            "rollout": {"shadow": 20},
        },
        "files": {"golden.jsonl": GOLDEN, "train.yaml": "train: {method: kto}\n"},
    },
}


def test_off_by_default(releases):
    assert releases["default"].kinds("CronJob") == []


def test_the_cronjob_runs_the_loop_with_its_secrets_volumes_and_a_valid_spec(render, tmp_path: Path):
    release = render(ON)
    (job,) = release.kinds("CronJob")
    config = release.find("ConfigMap", f"{PREFIX}-loop")
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["loop", "run", "/etc/loraplane-loop/loop.yaml"]
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]}
    assert env["LORAPLANE_STORE_URL"] == {"name": "pg", "key": "url"}
    assert env["LORAPLANE_ADMIN_KEY"] == {"name": "admin", "key": "admin-key"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert not mounts["adapters"].get("readOnly") and mounts["models"]["readOnly"]
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims["adapters"] == f"{PREFIX}-adapters"
    spec = yaml.safe_load(config["data"]["loop.yaml"])
    assert spec["gateway"]["url"] == f"http://{PREFIX}-gateway:80"
    assert spec["adapters_dir"] == "/registry/adapters"
    assert spec["train"]["overrides"] == {"train.max_steps": 40, "models_dir": "/registry/models"}
    assert config["data"]["golden.jsonl"] == GOLDEN
    for name in ("golden.jsonl", "train.yaml"):  # where the pod mounts them, here
        (tmp_path / name).write_text(config["data"][name])
    spec["gate"]["golden"], spec["train"]["config"] = str(tmp_path / "golden.jsonl"), str(tmp_path / "train.yaml")
    assert LoopSpec.model_validate(spec).rollout.shadow == 20  # the loop accepts what the chart renders


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"store": {"urlSecret": {"name": ""}}}, "loop.enabled needs a PostgreSQL store"),
        ({"loop": {"adminKeySecret": {"name": ""}}}, "loop.enabled needs loop.adminKeySecret.name"),
        ({"loop": {"spec": {"adapter": ""}}}, "loop.spec.adapter is required"),
    ],
)
def test_values_it_cannot_run_without_fail_the_render(render, change, message):
    values = yaml.safe_load(yaml.safe_dump(ON))
    for key, sub in change.items():
        for k, v in sub.items():
            values[key][k] = {**values[key][k], **v} if isinstance(v, dict) else v
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render(values)
