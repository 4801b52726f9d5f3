"""An LLM judge reached through the gateway itself: the gateway grades its adapter's captured
answers by asking its own base model (the mock engine answers the judge with a number), off the
request path; the judge's own requests (the base model) are never graded in turn."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai

from serving.gateway.auth import hash_key
from tests.conftest import GatewayThread, free_port
from tests.serving import test_gateway_faults as faults
from tests.serving.test_gateway_faults import BASE, engine, gateway_app

dirs = faults.dirs
ADMIN = {"Authorization": "Bearer admin-secret"}


def test_the_gateway_grades_answers_through_itself(dirs, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", "kj")
    port = free_port()
    judge = {
        "name": "judge",
        "kind": "model",
        "applies_to": ["bot"],
        "params": {
            "base_url": f"http://127.0.0.1:{port}/v1",
            "model": BASE,
            "rubric": "Rate 1-10: {prompt} -> {answer}",
            "scale": "ten",
            "api_key_env": "JUDGE_KEY",
        },
    }
    config = {
        "store.url": f"sqlite:///{tmp_path / 'lp.db'}",
        "auth.enabled": True,
        "auth.admin_key_sha256": hash_key("admin-secret"),
        "auth.keys": [{"name": "app", "sha256": hash_key("ka")}, {"name": "judge", "sha256": hash_key("kj")}],
        "adapters": [{"name": "bot", "capture": "bodies"}],
        "graders": [judge],
    }
    with (
        engine(tokens=3, ttft_ms=1.0, itl_ms=0.0, replies={BASE: "10"}) as eng,
        GatewayThread(gateway_app(dirs, [eng.url], **config), port) as gw,
    ):
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="ka", max_retries=0)
        ids = [
            client.chat.completions.create(
                model="bot", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=3, user=f"u{i}"
            ).id
            for i in range(4)
        ]
        store = gw.state.store
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(store.scores_of(ids, "grader:judge")) < 4:
            time.sleep(0.2)
        assert store.scores_of(ids, "grader:judge") == dict.fromkeys(ids, 1.0)  # "10" on the 1..10 scale
        assert store.scores_of(ids, "user") == {}  # a grader's score is not the user's
        logged = store.requests()
        judged = [r for r in logged if r.key_name == "judge"]
        assert len(judged) == 4 and all(r.variant == "none" for r in judged)  # the judge's calls, logged ...
        metrics = httpx.get(f"{gw.url}/metrics", headers=ADMIN).text
        assert 'loraplane_grader_scored_total{grader="judge",variant="bot@v1"} 4.0' in metrics
        graded = [line for line in metrics.splitlines() if line.startswith("loraplane_grader_")]
        assert graded and not any('variant="none"' in line for line in graded)  # ... never graded
