"""The adapter-sync script (s3 mode), run for real with /bin/sh against a local stand-in for rclone.

The stand-in accepts exactly the two rclone invocations the script makes (and fails on anything else),
serving a local directory as the bucket. What is tested is the script's contract: only published
versions (manifest present), valid names only, copy-then-rename (never a half-copied version), and
already-present versions are never re-copied.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helm_release import PREFIX

FAKE_RCLONE = r"""#!/bin/sh
# rclone lsf -R --files-only --include /*/*/loraplane-adapter.json SRC | rclone copy SRC DST
if [ "$1" = lsf ] && [ "$2" = -R ] && [ "$3" = --files-only ] && [ "$4" = --include ] \
    && [ "$5" = "/*/*/loraplane-adapter.json" ] && [ $# -eq 6 ]; then
    [ -n "${FAKE_RCLONE_FAIL_LIST:-}" ] && exit 3
    cd "$6" && find . -path './*/*/loraplane-adapter.json' | sed 's|^\./||' | sort
elif [ "$1" = copy ] && [ $# -eq 3 ]; then
    [ -n "${FAKE_RCLONE_FAIL_COPY:-}" ] && { mkdir -p "$3" && : > "$3/partial"; exit 1; }
    mkdir -p "$3" && cp -R "$2/." "$3/"
else
    echo "unexpected rclone call: $*" >&2
    exit 64
fi
"""


def publish(bucket: Path, name: str, version: str, manifest: bool = True) -> None:
    directory = bucket / name / version
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps({"r": 16}))
    (directory / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    if manifest:
        (directory / "loraplane-adapter.json").write_text(json.dumps({"name": name, "version": version}))


@pytest.fixture
def sync(releases, tmp_path):
    """sync(mode, **env) runs the script from the rendered ConfigMap; returns (exit code, stderr)."""
    release = releases["keda-s3-auth"]
    script = tmp_path / "adapter-sync.sh"
    script.write_text(release.find("ConfigMap", f"{PREFIX}-adapter-sync")["data"]["adapter-sync.sh"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rclone").write_text(FAKE_RCLONE)
    (bin_dir / "rclone").chmod(0o755)
    bucket, dest = tmp_path / "bucket", tmp_path / "adapters"
    bucket.mkdir()
    dest.mkdir()

    def _run(mode: str = "once", **env: str) -> tuple[int, str]:
        environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "REMOTE": str(bucket), "DEST": str(dest)}
        done = subprocess.run(["/bin/sh", str(script), mode], env={**environ, **env}, capture_output=True, text=True)
        return done.returncode, done.stderr

    _run.bucket, _run.dest = bucket, dest
    return _run


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_copies_published_versions_and_skips_unfinished_or_misnamed_ones(sync):
    publish(sync.bucket, "demo-json", "v1")
    publish(sync.bucket, "demo-json", "v2")
    publish(sync.bucket, "demo-json", "v3", manifest=False)  # upload in progress
    publish(sync.bucket, "Demo JSON", "v1")
    publish(sync.bucket, "demo-json", "latest")
    code, stderr = sync("once")
    assert code == 0, stderr
    assert sorted(p.name for p in (sync.dest / "demo-json").iterdir()) == ["v1", "v2"]
    assert listing(sync.dest / "demo-json" / "v2") == listing(sync.bucket / "demo-json" / "v2")
    assert "skipping demo-json/latest" in stderr


def test_present_versions_are_never_recopied_and_new_ones_arrive(sync):
    publish(sync.bucket, "demo-json", "v1")
    assert sync("once")[0] == 0
    local = sync.dest / "demo-json" / "v1" / "adapter_config.json"
    local.write_text("served copy")
    publish(sync.bucket, "demo-json", "v2")
    assert sync("once")[0] == 0
    assert local.read_text() == "served copy"
    assert (sync.dest / "demo-json" / "v2" / "loraplane-adapter.json").is_file()


def test_a_failed_copy_publishes_nothing_and_leaves_no_temporary_directory(sync):
    publish(sync.bucket, "demo-json", "v1")
    code, stderr = sync("once", FAKE_RCLONE_FAIL_COPY="1")
    assert code == 1
    assert "copying demo-json@v1 failed" in stderr
    assert list((sync.dest / "demo-json").iterdir()) == []


def test_an_unreachable_bucket_fails_the_init_container(sync):
    code, stderr = sync("once", FAKE_RCLONE_FAIL_LIST="1")
    assert code == 1 and "cannot list" in stderr


def test_script_in_the_configmap_is_the_chart_file_and_pods_run_it(releases):
    release = releases["keda-s3-auth"]
    chart_file = Path(__file__).resolve().parents[2] / "helm" / "loraplane" / "files" / "adapter-sync.sh"
    rendered = release.find("ConfigMap", f"{PREFIX}-adapter-sync")["data"]["adapter-sync.sh"]
    assert rendered.strip() == chart_file.read_text().strip()
    s3 = release.values["adapters"]["sync"]["s3"]
    for workload, mount in ((release.engine, "/adapters"), (release.gateway, "/registry/adapters")):
        init = release.container(workload, "adapter-sync-init")
        sidecar = release.container(workload, "adapter-sync")
        assert init["command"][-1] == "once" and sidecar["command"][-1] == "loop"
        env = {e["name"]: e["value"] for e in init["env"]}
        assert env["REMOTE"] == f"registry:{s3['bucket']}/{s3['prefix']}"
        assert env["DEST"] == mount
        assert env["RCLONE_CONFIG_REGISTRY_TYPE"] == "s3"
        assert init["envFrom"] == [{"secretRef": {"name": s3["credentialsSecret"]}}]
        assert {"name": "adapters", "mountPath": mount} in init["volumeMounts"]  # writable for the sync
    assert release.kinds("PersistentVolumeClaim")[0]["metadata"]["name"] == f"{PREFIX}-models"  # no adapter PVC


def test_s3_source_without_a_bucket_is_refused_at_render(render):
    import helm_python

    with pytest.raises(helm_python.HelmError, match="bucket is empty"):
        render({"adapters": {"source": "s3"}})
