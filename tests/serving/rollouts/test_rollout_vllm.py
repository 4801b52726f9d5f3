"""A rollout end to end through the gateway and a real vLLM engine, with the session's trained
adapters demo-json v1 (stable) and v2 (candidate), the real `openai` client, exact-match feedback
against the held-out references, an automatic decision by the evaluator, then a rollback."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from fakes.servers import wait_for
from serving.rollouts import cli
from tests.conftest import ADMIN, ADMIN_KEY

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
HELDOUT = [json.loads(line)["messages"] for line in (REPO / "data/demo/heldout.jsonl").open()]


def status(url: str) -> dict:
    return httpx.get(f"{url}/admin/rollouts/e2e", headers=ADMIN, timeout=30).json()


def test_rollout_splits_scores_advances_and_rolls_back_on_real_vllm(gateway, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LORAPLANE_ADMIN_KEY", ADMIN_KEY)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=300)
    body = {
        "candidate": f"{gateway.adapter}@v2",
        "steps": [25, 50, 100],
        "min_samples": 3,
        "interval_s": 1.0,
        "guards": ["error_rate:0", "feedback:0"],
        "capture": "bodies",
    }
    started = httpx.post(f"{gateway.url}/admin/rollouts/e2e", json=body, headers=ADMIN, timeout=30)
    assert started.status_code == 201, started.text
    assert started.json()["control"] == f"{gateway.adapter}@v1"  # the stable version
    served: dict[str, list[float]] = {}
    try:
        for i, messages in enumerate(HELDOUT):
            resp = client.chat.completions.with_raw_response.create(
                model=gateway.adapter, messages=messages[:1], max_tokens=48, temperature=0, user=f"user-{i}"
            )
            version = resp.headers["x-loraplane-adapter"]
            answer = resp.parse()
            score = float(answer.choices[0].message.content.strip() == messages[1]["content"])
            rated = httpx.post(f"{gateway.url}/v1/feedback", json={"id": answer.id, "score": score}, timeout=30)
            assert rated.status_code == 200, rated.text
            served.setdefault(version, []).append(score)
            if min(len(served.get(f"{gateway.adapter}@{v}", [])) for v in ("v1", "v2")) >= 3:
                break
        advanced = wait_for(lambda: (s := status(gateway.url))["step_percent"] == 50 and s, timeout_s=60)
        audit = httpx.get(f"{gateway.url}/admin/audit", params={"subject": "e2e"}, headers=ADMIN).json()["data"]
        rolled = httpx.post(
            f"{gateway.url}/admin/rollouts/e2e/rollback", json={"reason": "e2e test done"}, headers=ADMIN
        )
        assert rolled.status_code == 200, rolled.text
        back = wait_for(
            lambda: all(
                client.chat.completions.with_raw_response.create(
                    model=gateway.adapter, messages=HELDOUT[0][:1], max_tokens=4, user=f"user-{i}"
                ).headers["x-loraplane-adapter"]
                == f"{gateway.adapter}@v1"
                for i in range(4)
            ),
            timeout_s=30,
        )
        code = cli.main(["--url", gateway.url, "export", "e2e", "--out", str(tmp_path / "export")])
    finally:  # leave the session gateway's adapter as the other tests expect it
        httpx.post(f"{gateway.url}/admin/rollouts/e2e/rollback", headers=ADMIN, json={}, timeout=30)
    v1, v2 = served[f"{gateway.adapter}@v1"], served[f"{gateway.adapter}@v2"]
    variants = advanced["variants"]
    assert variants["candidate"]["requests"] == len(v2) and variants["control"]["requests"] == len(v1)
    assert variants["candidate"]["feedback"]["n"] == len(v2)
    assert variants["candidate"]["feedback"]["mean"] == pytest.approx(sum(v2) / len(v2))
    assert variants["control"]["feedback"]["mean"] == pytest.approx(sum(v1) / len(v1))
    assert variants["control"]["error_rate"] == 0.0 and variants["control"]["users"] >= 1
    advance = next(a for a in audit if a["action"] == "rollout.advance")
    assert advance["actor"].startswith("evaluator:") and advance["numbers"]["report"]["step_percent"] == 25
    assert back and code == 0
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["captures"] == len(v1) + len(v2) and manifest["rated"] == len(v1) + len(v2)
    assert manifest["files"]["sft.jsonl"]["rows"] == int(sum(v1) + sum(v2))
