"""Routes ask for narrow dependencies (serving/gateway/deps.py), never for the whole GatewayState."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from tests.serving.test_gateway_faults import dirs, gateway_app  # noqa: F401


def calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from calls(sub)


def test_no_route_depends_on_the_gateway_state(dirs) -> None:  # noqa: F811
    routes = [r for r in gateway_app(dirs, []).routes if isinstance(r, APIRoute)]
    assert len(routes) >= 15
    for route in routes:
        wanted = {str(inspect.signature(call).return_annotation) for call in calls(route.dependant)}
        assert wanted, f"{route.path} asks for nothing"
        assert "GatewayState" not in wanted, f"{route.path} depends on the whole GatewayState"
        params = inspect.signature(route.endpoint).parameters.values()
        assert not any("GatewayState" in str(p.annotation) for p in params), route.path
