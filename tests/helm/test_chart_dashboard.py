"""The Grafana dashboard ConfigMap carries the chart's copy of serving/dashboards/loraplane.json."""

from __future__ import annotations

import json
import re
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


def _panels() -> dict[str, list[str]]:
    dashboard = json.loads(CHART_COPY.read_text())
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}


# metric -> the labels its panel must group by (metric names and labels: serving/metrics.py, issues 12/13)
ROLLOUT_PANELS = {
    "loraplane_feedback_total": {"variant"},
    "loraplane_feedback_score_sum": {"variant"},
    "loraplane_rollout_step_percent": {"rollout"},
    "loraplane_rollout_state": {"rollout", "state"},
    "loraplane_rollout_decisions_total": {"rollout", "outcome"},
    "loraplane_request_log_dropped_total": set(),
    "loraplane_requests_total": {"status_class"},
    "loraplane_unkeyed_requests_total": {"route"},
    "loraplane_key_tokens_total": {"key", "model"},  # usage per key (issue 22)
    "loraplane_budget_refusals_total": {"key", "budget"},
}


@pytest.mark.parametrize("metric", ROLLOUT_PANELS)
def test_a_panel_shows_each_rollout_and_refusal_metric_split_by_its_labels(metric):
    grouped = [
        set(re.findall(r"by \(([^)]*)\)", expr)[0].replace(" ", "").split(",")) if "by (" in expr else set()
        for exprs in _panels().values()
        for expr in exprs
        if re.search(rf"\b{metric}\b", expr)
    ]
    assert any(ROLLOUT_PANELS[metric] <= labels for labels in grouped), (metric, grouped)


def test_feedback_score_panel_is_the_mean_score_per_variant():
    (expr,) = _panels()["Feedback score (mean) by variant"]
    numerator, denominator = expr.split(" / ")
    assert "loraplane_feedback_score_sum" in numerator and "loraplane_feedback_total" in denominator
    assert "by (model, variant)" in numerator and "by (model, variant)" in denominator


def test_refusal_panel_counts_every_non_2xx_class():
    (expr,) = _panels()["Refusals/s by status class and route (4xx, 5xx)"]
    assert 'status_class=~"4xx|5xx"' in expr


def test_every_query_is_balanced_and_uses_only_defined_variables():
    dashboard = json.loads(CHART_COPY.read_text())
    defined = {v["name"] for v in dashboard["templating"]["list"]} | {"__rate_interval"}
    for title, exprs in _panels().items():
        for expr in exprs:
            depth = 0
            for char in expr:
                depth += {"(": 1, ")": -1}.get(char, 0)
                assert depth >= 0, (title, expr)
            assert depth == 0 and expr.count("{") == expr.count("}"), (title, expr)
            assert set(re.findall(r"\$\{?(\w+)", expr)) <= defined, (title, expr)
