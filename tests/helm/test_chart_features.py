"""Every feature the docs describe can be set through the chart: the admin key whatever
gateway.auth.enabled is, rollouts.*, store.*, experiments[].capture, keys[].mayPinVariant, and the
models.fill Job; and helm/loraplane/README.md documents every value (generated from the schema)."""

from __future__ import annotations

import sys

import helm_python
import pytest
from helm_release import CHART_DIR, PREFIX, load_gateway_config

sys.path.insert(0, str(CHART_DIR.parents[1] / "scripts"))
import chart_values_doc  # noqa: E402

ADMIN = "a" * 64


def test_admin_key_works_without_api_keys(render, tmp_path):
    release = render({"gateway": {"auth": {"enabled": False, "adminKeySha256": ADMIN}}})
    cfg = load_gateway_config(release, tmp_path)
    assert cfg.auth.enabled is False and cfg.auth.admin_key_sha256 == ADMIN
    assert "checksum/auth" in release.gateway["spec"]["template"]["metadata"]["annotations"]
    assert "Admin API (rollouts): export LORAPLANE_ADMIN_KEY" in release.templates["loraplane/templates/NOTES.txt"]


def test_without_an_admin_key_the_notes_say_how_to_set_one(releases, tmp_path):
    release = releases["default"]
    assert load_gateway_config(release, tmp_path).auth.admin_key_sha256 is None
    notes = release.templates["loraplane/templates/NOTES.txt"]
    assert "The admin API answers 403: no admin key is set. Set gateway.auth.adminKeySha256" in notes


def test_auth_enabled_without_an_admin_key_fails_naming_the_value(render):
    with pytest.raises(helm_python.HelmRenderError, match="gateway.auth.adminKeySha256 is empty"):
        render({"gateway": {"auth": {"enabled": True}}, "helmTest": {"enabled": False}})


def test_rollouts_store_capture_and_may_pin_variant_reach_the_gateway(releases, tmp_path):
    release = releases["deepseek-llm-7b"]
    cfg, values = load_gateway_config(release, tmp_path), release.values
    assert cfg.rollouts.steps == values["rollouts"]["steps"] == [5, 25, 100]
    assert (cfg.rollouts.min_samples, cfg.rollouts.interval_s, cfg.rollouts.promote_when) == (500, 60.0, "not_worse")
    assert cfg.rollouts.guards == values["rollouts"]["guards"]
    assert (cfg.store.request_log, cfg.store.body_retention_s) == (True, 259200.0)
    assert [(e.name, e.capture) for e in cfg.experiments] == [("support-ab", "bodies")]
    assert [(k.name, k.may_pin_variant) for k in cfg.auth.keys] == [("support-app", True)]
    assert cfg.auth.enabled is False and cfg.auth.admin_key_sha256 == values["gateway"]["auth"]["adminKeySha256"]


def test_null_values_leave_the_gateway_defaults(releases, tmp_path):
    from serving.config import RolloutsConfig, StoreConfig

    cfg = load_gateway_config(releases["default"], tmp_path)
    assert cfg.rollouts == RolloutsConfig() and cfg.store == StoreConfig()


def test_models_fill_job_copies_the_registered_base(releases):
    release = releases["deepseek-llm-7b"]
    (job,) = release.kinds("Job")
    assert job["metadata"]["name"].startswith(f"{PREFIX}-models-fill-")
    container = release.pod_spec(job)["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["REMOTE"] == "store:example-models/models/deepseek-llm-7b-chat" and env["BASE"] == "deepseek-llm-7b-chat"
    script = container["args"][0]
    assert script.index("--exclude loraplane-base.json") < script.index('"$REMOTE/loraplane-base.json"')
    assert 'mv "$tmp" "$final"' in script  # renamed into place when complete
    claim = release.pod_spec(job)["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == f"{PREFIX}-models"
    assert not releases["default"].kinds("Job")


def test_models_fill_without_a_bucket_fails_naming_the_value(render):
    with pytest.raises(helm_python.HelmRenderError, match="models.fill.s3.bucket is empty"):
        render({"models": {"fill": {"enabled": True}}})


def test_every_value_is_documented():
    assert chart_values_doc.undocumented() == [], "add a comment above these keys in values.yaml"


def test_chart_readme_table_is_generated_from_the_schema():
    readme = (CHART_DIR / "README.md").read_text()
    table = readme.split(chart_values_doc.BEGIN)[1].split(chart_values_doc.END)[0].strip()
    assert table == chart_values_doc.table(), "regenerate: python scripts/chart_values_doc.py --write"
