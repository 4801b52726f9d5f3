"""Issue 12 in the cluster: the control-plane store (SQLite for one gateway pod, PostgreSQL from a Secret
for several), migrations before the gateway serves, and no evaluator besides the gateway's own lease."""

from __future__ import annotations

import os
import subprocess
import sys

import helm_python
import pytest
import sqlalchemy as sa
from helm_release import POD_KINDS, PREFIX, gateway_config_files, load_gateway_config
from sqlalchemy.engine import make_url

from serving.store.connect import URL_ENV, head_revision, store_url

PG_SECRET = {"store": {"urlSecret": {"name": "pg-url", "key": "url"}}}


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize(
    ("gateway", "named"),
    [
        ({"replicas": 2}, "gateway.replicas is 2"),
        ({"autoscaling": {"enabled": True}}, "gateway.autoscaling.enabled is true"),
    ],
    ids=["replicas", "hpa"],
)
def test_several_gateway_pods_without_a_postgresql_secret_are_refused(render, gateway, named):
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render({"gateway": gateway})
    message = str(caught.value)
    assert named in message and "store.urlSecret.name is empty" in message, message
    release = render({"gateway": gateway, **PG_SECRET})  # the same with a PostgreSQL URL from a Secret
    assert release.kinds("Deployment")


def test_several_gateway_pods_read_the_store_url_from_the_secret(render):
    release = render({"gateway": {"replicas": 3}, **PG_SECRET})
    for name in ("gateway", "store-migrate"):
        env = env_of(release.container(release.gateway, name))
        assert env["LORAPLANE_STORE_URL"] == {
            "name": "LORAPLANE_STORE_URL",
            "valueFrom": {"secretKeyRef": {"name": "pg-url", "key": "url"}},
        }
    assert "strategy" not in release.gateway["spec"]  # rolling update: pods share PostgreSQL
    assert "store" not in {v["name"] for v in release.pod_spec(release.gateway)["volumes"]}
    assert f"{PREFIX}-store" not in {c["metadata"]["name"] for c in release.kinds("PersistentVolumeClaim")}
    assert release.find("PodDisruptionBudget", f"{PREFIX}-gateway")["spec"]["minAvailable"] == 1


def test_one_gateway_pod_keeps_sqlite_on_a_writable_pvc_of_its_own(releases):
    release = releases["default"]
    claim = release.find("PersistentVolumeClaim", f"{PREFIX}-store")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert release.gateway["spec"]["strategy"] == {"type": "Recreate"}  # one writer at a time
    volumes = {v["name"]: v for v in release.pod_spec(release.gateway)["volumes"]}
    assert volumes["store"] == {"name": "store", "persistentVolumeClaim": {"claimName": f"{PREFIX}-store"}}
    for name in ("gateway", "store-migrate"):
        container = release.container(release.gateway, name)
        url = make_url(env_of(container)["LORAPLANE_STORE_URL"]["value"])  # SQLAlchemy's own URL parser
        assert url.get_backend_name() == "sqlite"
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "store"]
        assert url.database.startswith(mount["mountPath"] + "/") and not mount.get("readOnly")


def test_migrations_run_in_an_init_container_before_the_gateway_serves(release):
    spec = release.pod_spec(release.gateway)
    migrate = release.container(release.gateway, "store-migrate")
    assert migrate in spec["initContainers"]  # init containers finish before the gateway container starts
    gateway = release.container(release.gateway, "gateway")
    assert migrate["command"] == ["loraplane"]
    first_config = gateway["args"][gateway["args"].index("--config") + 1]
    assert migrate["args"] == ["store", "migrate", "--config", first_config]
    assert migrate["image"] == gateway["image"]  # the schema matches the code about to run
    assert env_of(migrate)["LORAPLANE_STORE_URL"] == env_of(gateway)["LORAPLANE_STORE_URL"]
    config_mount = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}["config"]
    assert {"name": "config", "mountPath": config_mount, "readOnly": True} in migrate["volumeMounts"]
    assert "LORAPLANE_ENGINE_API_KEY" not in env_of(migrate)  # it talks to the database only


def test_only_gateway_pods_touch_the_store_so_the_lease_elects_the_one_evaluator(release):
    """The evaluator runs inside `loraplane serve` and takes a lease in the store: the chart starts no
    evaluator Deployment, CronJob or Job of its own, whatever the replica count."""
    jobs = [d for d in release.docs if d["kind"] in ("Job", "CronJob")]
    # the one Job the chart may start (models.fill) copies weights and has no store URL
    assert [j["metadata"]["name"].rsplit("-", 1)[0] for j in jobs] in ([], ["lp-loraplane-models-fill"])
    assert "LORAPLANE_STORE_URL" not in str(jobs)
    store_users = set()
    for doc in release.docs:
        if doc["kind"] not in POD_KINDS:
            continue
        spec = release.pod_spec(doc)
        for container in spec["containers"] + spec.get("initContainers", []):
            if "LORAPLANE_STORE_URL" in env_of(container):
                store_users.add((doc["kind"], doc["metadata"]["name"], container["name"]))
    gateway = ("Deployment", f"{PREFIX}-gateway")
    assert store_users == {(*gateway, "gateway"), (*gateway, "store-migrate")}
    serve = [
        d
        for d in release.docs
        if d["kind"] in POD_KINDS
        for c in release.pod_spec(d)["containers"]
        if "serve" in c.get("args", [])
    ]
    assert [d["metadata"]["name"] for d in serve] == [f"{PREFIX}-gateway"]


def test_autoscaling_case_is_valid_for_several_gateways(releases):
    """ci/autoscaling-values.yaml: HPA behind an Ingress, so PostgreSQL from a Secret and auth on."""
    release = releases["autoscaling"]
    env = env_of(release.container(release.gateway, "gateway"))
    assert env["LORAPLANE_STORE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "loraplane-store", "key": "url"}
    assert release.values["gateway"]["auth"]["enabled"] is True
    assert release.kinds("Ingress")


def test_notes_name_the_store_the_admin_key_and_unshared_rate_limits(render, releases):
    notes = "loraplane/templates/NOTES.txt"
    default = releases["default"].templates[notes]
    assert f"SQLite on PVC {PREFIX}-store" in default and "admin API answers 403" in default
    autoscaling = releases["autoscaling"].templates[notes]
    assert "the URL in Secret loraplane-store" in autoscaling and "LORAPLANE_ADMIN_KEY" in autoscaling
    assert "counted per gateway pod" not in autoscaling  # shared through ratelimit.redisUrlSecret
    unshared = render({"gateway": {"replicas": 2}, **PG_SECRET}).templates[notes]
    assert "Per-key rate limits are counted per gateway pod" in unshared


def test_the_store_reads_the_env_the_chart_sets(releases, monkeypatch, tmp_path):
    for case in ("default", "autoscaling"):
        release = releases[case]
        env = env_of(release.container(release.gateway, "gateway"))
        assert URL_ENV in env  # the name serving/store/connect.py reads
        url = env[URL_ENV].get("value", "postgresql+psycopg://lp:pw@pg:5432/loraplane")  # a Secret's content
        monkeypatch.setenv(URL_ENV, url)
        (tmp_path / case).mkdir()
        assert store_url(load_gateway_config(release, tmp_path / case)) == url


def test_the_migration_init_container_migrates_the_rendered_config_to_head(releases, tmp_path):
    """Runs the init container's own command line (`loraplane store migrate --config ...`) on the
    rendered ConfigMap, with its SQLite URL moved from the PVC mount into tmp_path."""
    release = releases["default"]
    migrate = release.container(release.gateway, "store-migrate")
    (config,) = gateway_config_files(release, tmp_path)[:1]
    url = env_of(migrate)[URL_ENV]["value"].replace("/var/lib/loraplane", str(tmp_path / "store"))
    args = [a if not a.endswith("/serving.yaml") else str(config) for a in migrate["args"]]
    env = {**os.environ, URL_ENV: url}
    done = subprocess.run(
        [sys.executable, "-m", migrate["command"][0], *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "(head)" in done.stdout
    with sa.create_engine(url).connect() as conn:
        revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    assert revision == head_revision()
