"""Fixtures: the chart rendered offline by the real Helm library (helm_python), once per values case."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest
from helm_release import CASES, CHART_DIR, NAMESPACE, RELEASE, Release, case_values, with_offline_engine_key


@pytest.fixture(scope="session")
def chart():
    loaded = helm_python.Chart.load(str(CHART_DIR))
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def render(chart):
    """render(values, case=...) -> Release, exactly as `helm template lp -n ai -f values` would.

    `helm template` sees no cluster, so the chart refuses to invent an engine key (it would change on
    every render): unless `values` choose engine.apiKey themselves, the key comes from the Secret an
    operator made beforehand (OFFLINE_ENGINE_KEY). raw_render renders `values` alone."""

    def _render(values: dict[str, Any], case: str = "adhoc") -> Release:
        values = with_offline_engine_key(values)
        templates = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        return Release(case=case, values=chart.merge_values(values), templates=templates)

    return _render


@pytest.fixture(scope="session")
def releases(render) -> dict[str, Release]:
    return {case: render(case_values(case), case) for case in CASES}


@pytest.fixture(params=CASES)
def release(request, releases) -> Release:
    return releases[request.param]
