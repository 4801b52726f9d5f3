"""The Grafana dashboard only queries metrics the gateway declares, split per variant."""

from __future__ import annotations

import json
import re
from pathlib import Path

from serving.metrics import GatewayMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "serving/dashboards/loraplane.json"


def declared_names() -> set[str]:
    names = set()
    for family in GatewayMetrics().registry.collect():
        names |= {s.name for s in family.samples} | {family.name, f"{family.name}_total", f"{family.name}_bucket"}
        if family.type in ("summary", "histogram"):  # a labelled family has no samples until first use
            names |= {f"{family.name}_sum", f"{family.name}_count"}
    return names


def test_dashboard_queries_only_declared_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bloraplane_[a-z_]+", e)}
    assert used and used <= declared_names(), used - declared_names()
    assert sum("by (variant)" in e or "variant)" in e for e in exprs) >= 4  # per-variant panels


def test_a_usage_panel_shows_tokens_per_key() -> None:
    dash = json.loads(DASHBOARD.read_text())
    usage = [t["expr"] for p in dash["panels"] if p["title"].startswith("Usage per key") for t in p["targets"]]
    assert usage and all("loraplane_key_tokens_total" in e for e in usage)
    assert any("by (key, model)" in e for e in usage) and any("by (key)" in e for e in usage)
    assert "key" in {v["name"] for v in dash["templating"]["list"]}
