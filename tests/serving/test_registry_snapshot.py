"""The request path reads one in-memory registry snapshot, refreshed by the control plane's poll:
no completion lists the adapters folder, and a version published while the gateway runs is served
within one poll."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import GatewayThread, free_port
from tests.serving.test_gateway_faults import BASE, chat, dirs, engine, gateway_app  # noqa: F401
from tests.serving.test_registry import make_adapter

EXPERIMENT = {"experiments": [{"name": "ab", "variants": {"bot@v1": 50, "other@v1": 50}}]}
QUICK = {"tokens": 1, "ttft_ms": 1.0, "itl_ms": 0.0}


def test_completions_never_list_the_adapters_folder(dirs, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    with engine(**QUICK) as e0, GatewayThread(gateway_app(dirs, [e0.url], **EXPERIMENT), free_port()) as gw:
        listed: list[str] = []

        def on_request_path(original):  # a listing in the gateway's event-loop thread is a request's
            def guarded(*args, **kwargs):
                if threading.current_thread() is gw.thread:
                    listed.append(str(args[0] if args else "."))
                    raise AssertionError(f"listed {listed[-1]} on the request path")
                return original(*args, **kwargs)  # the poll's refresh, in a worker thread

            return guarded

        for module, name in ((os, "scandir"), (os, "listdir"), (Path, "iterdir")):
            monkeypatch.setattr(module, name, on_request_path(getattr(module, name)))
        for model in (BASE, "bot", "bot@v1", "ab", "third"):
            resp = chat(gw.url, model, max_tokens=1)
            assert resp.status_code == 200, (model, resp.text)
        unknown = chat(gw.url, "nobody")
        assert unknown.status_code == 404 and "'nobody' does not exist" in unknown.json()["error"]["message"]
        assert listed == []


def test_a_version_published_while_serving_is_served_within_one_poll(dirs) -> None:  # noqa: F811
    with engine(**QUICK) as e0, GatewayThread(gateway_app(dirs, [e0.url]), free_port()) as gw:
        missing = chat(gw.url, "bot@v2")
        assert missing.status_code == 404 and "published versions: v1" in missing.json()["error"]["message"]
        make_adapter(dirs[1], "bot", "v2")
        make_adapter(dirs[1], "fresh", "v1")
        published = time.monotonic()
        poll_s = gw.state.cfg.store.poll_interval_s
        while chat(gw.url, "bot@v2").status_code != 200:
            # one poll (<= 1 s) refreshes the snapshot; the slack is for a machine busy with other jobs
            assert time.monotonic() - published < 2 * poll_s + 5, "bot@v2 not served after two polls"
            time.sleep(0.05)
        assert chat(gw.url, "fresh").headers["x-loraplane-adapter"] == "fresh@v1"
        assert chat(gw.url, "bot").headers["x-loraplane-adapter"] == "bot@v1"  # stable, not the newest
        models = {m["id"] for m in httpx.get(f"{gw.url}/v1/models").json()["data"]}
        assert {"bot@v2", "fresh", "fresh@v1"} <= models
