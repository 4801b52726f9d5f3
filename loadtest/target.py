"""Talk to the target outside the load itself: the start-up probe and /metrics snapshots."""

from __future__ import annotations

import httpx

from loadtest.errors import TargetUnreachable

PROBE_TIMEOUT_S = 5.0


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def probe(host: str, api_key: str | None = None) -> list[str]:
    """Check /health, then return the model names /v1/models lists. Raises TargetUnreachable."""
    try:
        with httpx.Client(base_url=host, timeout=PROBE_TIMEOUT_S, headers=auth_headers(api_key)) as client:
            health = client.get("/health")
            if health.status_code != 200:
                raise TargetUnreachable(
                    f"{host}/health answered HTTP {health.status_code}; the gateway is not ready, no load sent"
                )
            models = client.get("/v1/models")
    except httpx.HTTPError as exc:
        raise TargetUnreachable(
            f"cannot reach {host} ({type(exc).__name__}: {exc}); start the gateway (`loraplane serve`) "
            "or fix --host; no load sent"
        ) from None
    if models.status_code != 200:
        raise TargetUnreachable(f"{host}/v1/models answered HTTP {models.status_code}: {models.text[:200]}")
    try:
        return [card["id"] for card in models.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise TargetUnreachable(f"{host}/v1/models did not return an OpenAI model list") from None


def fetch_metrics(host: str) -> str | None:
    """The Prometheus text of {host}/metrics, or None when the target does not expose it."""
    try:
        response = httpx.get(f"{host}/metrics", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None
