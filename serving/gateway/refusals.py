"""Count every error response in loraplane_requests_total, refusals before forwarding included
(401/403/404/413/422/429/503...), so load shedding shows on the dashboard.

The proxy counts the answers it relays; the app's exception handlers call `count_error` for
everything else. Labels stay bounded: the route a spec's name (remembered by routes.handle) or
from a fixed table ("other" for any other path), the model only when it names the base, an
adapter in the registry or an experiment ("unknown" otherwise), the variant once one was chosen ("none" before).
"""

from __future__ import annotations

from fastapi import Request

from serving.gateway.control import ControlPlane
from serving.gateway.protocol import ROUTES as PROXIED
from serving.metrics import status_class
from serving.registry import AdapterRegistry

ROUTES = {
    **{spec.path: spec.name for spec in PROXIED},
    "/v1/responses": "responses",  # served as a chat call (serving/gateway/responses.py)
    "/v1/models": "models",
    "/v1/feedback": "feedback",
    "/health": "health",
    "/metrics": "metrics",
}
UNKNOWN = "unknown"


def route_label(request: Request) -> str:
    """The label handle() remembered for its spec, else the path's from the table."""
    remembered = getattr(request.state, "route_label", None)
    if remembered is not None:
        return remembered
    path = request.url.path
    return ROUTES.get(path) or ("admin" if path.startswith("/admin/") else "other")


def model_label(registry: AdapterRegistry, control: ControlPlane, model: str) -> str:
    """`model`'s label if it names something this gateway serves, else "unknown"."""
    name = model.split("@")[0]
    if name == registry.base.name or name in control.experiments or registry.has(name):
        return name
    return UNKNOWN


def remember_labels(
    request: Request, model: str | None = None, variant: str = "none", route: str | None = None
) -> None:
    """What count_error labels a refusal of this request with: its route (a spec's name), model, variant."""
    if route is not None:
        request.state.route_label = route
    if model is not None:
        request.state.metric_labels = (model, variant)


def count_error(request: Request, status: int) -> None:
    state = getattr(request.app.state, "gateway", None)
    if state is None:  # not started (lifespan not run)
        return
    model, variant = getattr(request.state, "metric_labels", (UNKNOWN, "none"))
    state.metrics.requests.labels(route_label(request), model, variant, status_class(status)).inc()
