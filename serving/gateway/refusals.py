"""Count every error response in loraplane_requests_total, refusals before forwarding included
(401/403/404/413/422/429/503...), so load shedding shows on the dashboard.

The proxy counts the answers it relays; the app's exception handlers call `count_error` for
everything else. Labels stay bounded: the route from a fixed table ("other" for any other
path), the model only when it names the base, an adapter in the registry or an experiment
("unknown" otherwise), the variant once one was chosen ("none" before).
"""

from __future__ import annotations

from fastapi import Request

from serving.gateway.state import GatewayState
from serving.metrics import status_class

ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/models": "models",
    "/v1/feedback": "feedback",
    "/health": "health",
    "/metrics": "metrics",
}
UNKNOWN = "unknown"


def route_label(path: str) -> str:
    return ROUTES.get(path) or ("admin" if path.startswith("/admin/") else "other")


def model_label(state: GatewayState, model: str) -> str:
    """`model`'s label if it names something this gateway serves, else "unknown"."""
    name = model.split("@")[0]
    if name == state.base_model or name in state.experiments or state.registry.has(name):
        return name
    return UNKNOWN


def remember_labels(request: Request, model: str, variant: str = "none") -> None:
    request.state.metric_labels = (model, variant)


def count_error(request: Request, status: int) -> None:
    state = getattr(request.app.state, "gateway", None)
    if state is None:  # not started (lifespan not run)
        return
    model, variant = getattr(request.state, "metric_labels", (UNKNOWN, "none"))
    state.metrics.requests.labels(route_label(request.url.path), model, variant, status_class(status)).inc()
