"""The demo's rollout step: v1 stable, v2 rolled out to 10%, simulated users rate each answer
(exact match against the held-out reference), and the gateway's evaluator decides.

Everything goes through the public surface: `loraplane rollout ...` (subprocesses) and HTTP with
the real `openai` client; this module imports neither the gateway nor the trainer.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

NAME = "demo-json-v2"
CONCURRENCY = 4
# Short on purpose (the demo's time budget): a small min-samples and interval; the decision rule
# `no_regression` advances and promotes while no guard shows v2 worse (docs/rollouts.md).
START_FLAGS = [
    "--steps", "10,50,100", "--min-samples", "4", "--interval", "2",
    "--guard", "error_rate:0", "--guard", "feedback:0", "--promote-when", "no_regression",
]  # fmt: skip


def rollout_cli(url: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "loraplane", "rollout", "--url", url, *args], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"loraplane rollout {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def status(url: str) -> dict:
    """GET /admin/rollouts/NAME (what `loraplane rollout status --json` prints), without a process per look."""
    resp = httpx.get(f"{url}/admin/rollouts/{NAME}", timeout=30)
    resp.raise_for_status()
    return resp.json()


def one_user(client: openai.OpenAI, url: str, example: dict, user: str) -> dict:
    """A user asks, gets an answer from whichever version the rollout gives them, and rates it."""
    messages = [m for m in example["messages"] if m["role"] != "assistant"]
    raw = client.chat.completions.with_raw_response.create(
        model="demo-json", messages=messages, temperature=0, max_tokens=64, user=user
    )
    answer = raw.parse()
    score = float((answer.choices[0].message.content or "").strip() == example["messages"][-1]["content"])
    httpx.post(f"{url}/v1/feedback", json={"id": answer.id, "score": score}, timeout=30).raise_for_status()
    return {"version": raw.headers.get("x-loraplane-adapter"), "score": score}


def run(url: str, examples: list[dict], out_dir: Path, max_users: int) -> dict:
    """Start the rollout, send users until the evaluator promotes or rolls back (or max_users)."""
    print(rollout_cli(url, "start", NAME, "--candidate", "demo-json@v2", *START_FLAGS))
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0, timeout=300)
    rows: list[dict] = []
    report: dict = {}
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for start in range(0, max_users, CONCURRENCY):
            users = range(start, min(start + CONCURRENCY, max_users))
            rows += pool.map(lambda i: one_user(client, url, examples[i % len(examples)], f"rollout-user-{i}"), users)
            report = status(url)
            print(f"  {len(rows):>3} users: {report['state']} at {report['step_percent']}% ({report['reason']})")
            if report["state"] in ("promoted", "rolled_back"):
                break
    deadline = time.monotonic() + 10  # the last batch may still be under evaluation
    while report["state"] == "running" and time.monotonic() < deadline:
        time.sleep(1)
        report = status(url)
    print(rollout_cli(url, "status", NAME, "--plot", str(out_dir / "rollout.png")))
    return {"users": len(rows), "report": report, "plot": str(out_dir / "rollout.png")}
