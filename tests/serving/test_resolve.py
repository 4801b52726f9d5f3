"""Model resolution (serving/gateway/resolve.py) against the real control plane: a request whose
caller chose the variant (X-Loraplane-Variant, or `adapter@vN`) is marked `pinned`, so the request
log leaves it out of rollout statistics; a split request carries the rollout step that chose it."""

from __future__ import annotations

import httpx

from serving.gateway.resolve import Target
from tests.conftest import GatewayThread, free_port
from tests.serving.test_gateway_faults import dirs, gateway_app  # noqa: F401
from tests.serving.test_registry import make_adapter

OPEN = {"auth.local_dev_open_admin": True, "store.log_flush_interval_s": 0.05}
EXPERIMENT = {"experiments": [{"name": "ab", "variants": {"bot@v1": 50, "other@v1": 50}}]}


def test_pinned_and_split_requests_in_a_rollout(dirs, tmp_path) -> None:  # noqa: F811
    make_adapter(dirs[1], "bot", "v2")
    cfg = {**OPEN, **EXPERIMENT, "store.url": f"sqlite:///{tmp_path / 'lp.db'}", "rollouts.evaluator": False}
    with GatewayThread(gateway_app(dirs, [], **cfg), free_port()) as gw:
        started = httpx.post(f"{gw.url}/admin/rollouts/r", json={"candidate": "bot@v2", "steps": [50, 100]})
        assert started.status_code == 201, started.text
        resolver = gw.state.resolver
        step = gw.state.control.snapshot.active_rollout("bot").step
        split = [resolver.resolve("bot", f"user:{i}", None) for i in range(40)]
        assert {t.ref.key for t in split} == {"bot@v1", "bot@v2"}  # both variants drawn
        assert all(t.rollout == "r" and t.step == step and not t.pinned for t in split)
        chose = resolver.resolve("bot", "user:0", "bot@v2")  # the header: the caller picked the candidate
        assert chose.ref.key == "bot@v2" and chose.rollout == "r" and chose.pinned and chose.step == step
        named: Target = resolver.resolve("bot@v2", "user:0", None)  # self-bucketed by name
        assert named.pinned and named.rollout is None
        assert resolver.resolve("ab", "user:0", "other@v1").pinned
        assert not resolver.resolve("ab", "user:0", None).pinned
        assert not resolver.resolve("other", "user:0", None).pinned  # the stable version: no choice made
