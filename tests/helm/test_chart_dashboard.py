"""The Grafana dashboard ConfigMap carries the chart's copy of serving/dashboards/loraplane.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helm_release import CHART_DIR, PREFIX

CHART_COPY = CHART_DIR / "dashboards" / "loraplane.json"
SERVING_DASHBOARD = Path(__file__).resolve().parents[2] / "serving" / "dashboards" / "loraplane.json"


def test_chart_copy_equals_the_serving_dashboard():
    if not SERVING_DASHBOARD.is_file():
        pytest.skip("serving/dashboards/loraplane.json does not exist yet; the chart ships a placeholder")
    assert CHART_COPY.read_bytes() == SERVING_DASHBOARD.read_bytes(), (
        "the chart's dashboard is stale: cp serving/dashboards/loraplane.json helm/loraplane/dashboards/"
    )


def test_dashboard_configmap_holds_the_dashboard_json(releases):
    release = releases["default"]
    configmap = release.find("ConfigMap", f"{PREFIX}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["loraplane.json"])
    assert dashboard == json.loads(CHART_COPY.read_text())
    assert dashboard["title"] and dashboard["panels"]


def test_dashboard_can_be_turned_off(render):
    release = render({"metrics": {"grafanaDashboard": {"enabled": False}}})
    assert [c for c in release.kinds("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")] == []
