"""One `loraplane loop` iteration end to end on the real engine: the bundled base behind a real vLLM
CPU engine and the gateway (store, `capture: bodies` on the adapter), a stable v1 trained by our
trainer, users' ratings sent with the real `openai` client and POST /v1/feedback (exact match against
the reference, as loraplane/demo_users.py rates), then `loraplane loop run SPEC` as a process: real
`feedback export`, real KTO training from v1, real `loraplane eval` gate, a real rollout with a
shadow stage decided by the gateway's evaluator. The loop is SIGKILLed once its train stage is
recorded (its trainer dies with it) and rerun: it trains again in a fresh run dir; SIGKILLed again
once its rollout runs and rerun: it waits on that rollout (never a second one) and finishes.

About 4-6 min on an idle 2-core machine (vLLM start, two short trainings, the rollout's traffic).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from fakes.servers import free_port
from tests.conftest import ADAPTER, ADMIN, ADMIN_KEY, BASE_NAME, REPO, GatewayThread, train_adapter

RATED = 16  # rated answers before the loop runs: every one a kto row
GOLDEN = 4  # held-out rows the gate scores stable and new on
ENV = {**os.environ, "LORAPLANE_ADMIN_KEY": ADMIN_KEY, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def rows(path: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[:n]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, base_dir: Path):
    """A registry with ADAPTER@v1 (3 trainer steps), a vLLM engine and the gateway with a SQLite store,
    the adapter's bodies captured and a fast rollout evaluator: (gateway url, registry, store url)."""
    from serving.config import load_config
    from serving.engines.process import EngineProcess
    from serving.gateway.app import create_app
    from serving.gateway.auth import hash_key

    root = tmp_path_factory.mktemp("loop-e2e")
    train_adapter(root / "adapters", root / "run-v1", "v1")
    store_url = f"sqlite:///{root / 'control.db'}"
    config = load_config(
        None,
        {
            "registry.models_dir": str(REPO / "models"),
            "registry.adapters_dir": str(root / "adapters"),
            "engine.port": free_port(),
            "engine.max_cpu_loras": 4,
            "gateway.port": free_port(),
            "auth.admin_key_sha256": hash_key(ADMIN_KEY),
            "store.url": store_url,
            "store.log_flush_interval_s": 0.1,
            "rollouts.tick_s": 0.5,
            "rollouts.lease_s": 3.0,
            "adapters": [{"name": ADAPTER, "capture": "bodies"}],
        },
    )
    proc = EngineProcess(config, base_dir, BASE_NAME, 0, root / "engine-logs")
    with proc.running(600):
        app = create_app(config, [proc.url], health_interval_s=0.5)
        with GatewayThread(app, config.gateway.port) as gw:
            yield gw.url, root, store_url


def ask(client: openai.OpenAI, url: str, example: dict, user: str, rate: bool, max_tokens: int) -> None:
    """One user request; a rating is 1 when the answer is exactly the reference, else 0 (demo_users)."""
    messages = [m for m in example["messages"] if m["role"] != "assistant"]
    answer = client.chat.completions.create(
        model=ADAPTER, messages=messages, temperature=0, max_tokens=max_tokens, user=user
    )
    if rate:
        score = float((answer.choices[0].message.content or "").strip() == example["messages"][-1]["content"])
        httpx.post(f"{url}/v1/feedback", json={"id": answer.id, "score": score}, timeout=30).raise_for_status()


def write_spec(root: Path, url: str, store_url: str) -> Path:
    golden = root / "golden.jsonl"
    golden.write_text("".join(json.dumps(r) + "\n" for r in rows(REPO / "data/demo/heldout.jsonl", GOLDEN)))
    spec = {
        "adapter": ADAPTER,
        "gateway": {"url": url, "publish_wait_s": 30},
        "store_url": store_url,
        "adapters_dir": str(root / "adapters"),
        "work_dir": str(root / "loop"),
        "lock_ttl_s": 3,  # the killed run's lease lapses quickly
        "trigger": {"min_new_ratings": RATED // 2},
        "data": {"export": "feedback", "method": "auto", "min_rows": RATED // 2},
        "train": {
            "config": str(REPO / "configs/train/demo-kto.yaml"),
            "overrides": {
                "train.max_steps": 2,
                "train.batch_size": 4,
                "data.eval": None,  # the gate scores it; no eval inside the trainer
                "data.max_seq_len": 96,
            },
        },
        "gate": {"golden": str(golden), "metric": "exact_match", "margin": 0.05, "max_tokens": 24},
        "rollout": {
            "shadow": 100,
            "steps": [50, 100],
            "guards": ["error_rate:0.05"],
            "min_samples": 10,
            "interval_s": 2,
            "promote_when": "no_regression",
            "wait_timeout_s": 240,
            "poll_s": 1,
        },
    }
    path = root / "loop.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def loop(*args: str, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "loraplane", "loop", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, text=True, **kw)


def stage(store_url: str):
    """A reader of the adapter's newest iteration straight from the store (cheap enough to poll)."""
    from loraplane.loop.cli import open_store

    store = open_store(store_url)

    def newest() -> dict | None:
        history = store.loop_iterations(ADAPTER)
        return dict(history[0].__dict__) if history else None

    return newest


def iteration(spec: Path) -> dict | None:
    """What `loraplane loop status --json` shows of the adapter's newest iteration."""
    out = subprocess.run(
        [sys.executable, "-m", "loraplane", "loop", "status", "--spec", str(spec), "--json"],
        cwd=REPO, env=ENV, capture_output=True, text=True, check=True,
    )  # fmt: skip
    history = json.loads(out.stdout)
    return history[0] if history else None


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {seconds:g} s: {what}")


def rollout_traffic(url: str, newest, stop: threading.Event) -> None:
    """Users (one request each) while the iteration is in its rollout stage: shadow, then canary."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    examples, n = rows(REPO / "data/demo/train.jsonl", 64), 0
    with ThreadPoolExecutor(4) as pool:
        while not stop.is_set():
            it = newest()
            if it is None or it["stage"] != "rollout":
                time.sleep(1)
                continue
            batch = [(examples[(n + i) % len(examples)], f"canary-user-{n + i}") for i in range(8)]
            list(pool.map(lambda e: ask(client, url, e[0], e[1], False, 8), batch))
            n += len(batch)


@pytest.mark.parametrize("die_with_parent", [True, False])
def test_a_command_the_loop_runs_dies_with_the_loop(die_with_parent: bool) -> None:
    """A SIGKILLed `loop run` leaves no orphan (a trainer that would publish the version the next
    run trains again): its commands get PR_SET_PDEATHSIG. Without it (LIBC None) the child lives on."""
    script = (
        "import loraplane.loop.iteration as it\n"
        f"it.LIBC = it.LIBC if {die_with_parent} else None\n"
        "it.run_command(['sleep', '60'])\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=ENV)
    try:
        child = wait(lambda: children(parent.pid), 30, "the command to start")[0]
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        if die_with_parent:
            wait(lambda: not alive(child), 10, "the command to die with the loop")
        else:
            time.sleep(1)
            assert alive(child)
            os.kill(child, signal.SIGKILL)
    finally:
        parent.kill()


@pytest.mark.slow
def test_one_loop_iteration_end_to_end_killed_mid_train_and_mid_rollout(served) -> None:
    url, root, store_url = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    examples = rows(REPO / "data/demo/train.jsonl", RATED)
    with ThreadPoolExecutor(4) as pool:  # users rate v1's answers (bodies captured)
        list(pool.map(lambda i: ask(client, url, examples[i], f"rater-{i}", True, 48), range(RATED)))
    spec, newest = write_spec(root, url, store_url), stage(store_url)

    first = loop("run", str(spec), stdout=subprocess.DEVNULL)
    try:  # SIGKILL the loop once its train stage is recorded and its trainer is running
        it = wait(lambda: (i := newest()) and (i["details"].get("train") or {}).get("attempts") and i, 240, "train")
        trainer = wait(lambda: children(first.pid), 30, "the trainer process")[0]
        time.sleep(3)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    assert it["stage"] == "train" and it["method"] == "kto" and it["version"] == "v2"
    wait(lambda: not alive(trainer), 15, "the killed loop's trainer to die with it")
    assert not (root / "adapters" / ADAPTER / "v2").exists()

    stop = threading.Event()
    traffic = threading.Thread(target=rollout_traffic, args=(url, newest, stop), daemon=True)
    traffic.start()
    try:
        time.sleep(4)  # the killed run's lease (lock_ttl_s 3) lapses
        second = loop("run", str(spec), stdout=subprocess.PIPE)
        try:  # resumed: trains, gates, starts the rollout; SIGKILLed once the rollout is running
            name = wait(lambda: (i := newest()) and i["stage"] == "rollout" and i["rollout"], 420, "rollout stage")
            wait(lambda: httpx.get(f"{url}/admin/rollouts/{name}", headers=ADMIN).status_code == 200, 60, name)
            second.send_signal(signal.SIGKILL)
            out, _ = second.communicate(timeout=10)
        finally:
            second.kill()
        assert "resuming iteration 1 at stage train" in out and f"rollout {name} started" in out
        time.sleep(4)
        third = loop("run", str(spec), stdout=subprocess.PIPE)
        out, _ = third.communicate(timeout=300)
    finally:
        stop.set()
        traffic.join(60)
    assert third.returncode == 0, out
    assert "resuming iteration 1 at stage rollout" in out and f"rollout {name} already started; waiting on it" in out
    listed = httpx.get(f"{url}/admin/rollouts", headers=ADMIN, timeout=30).json()["data"]
    assert [r["name"] for r in listed] == [name]  # the rerun never started a second rollout

    it = iteration(spec)
    assert it["stage"] == "done" and it["outcome"] in ("promoted", "rolled_back"), it
    export = it["details"]["export"]
    assert export["rows"]["kto.jsonl"] >= RATED // 2
    assert json.loads((Path(export["dir"]) / "manifest.json").read_text())["files"]["kto.jsonl"]["rows"] > 0
    attempts = it["details"]["train"]["attempts"]
    assert len(attempts) == 2 and "exit_code" not in attempts[0] and attempts[1]["exit_code"] == 0
    assert attempts[0]["out_dir"] != attempts[1]["out_dir"]
    manifest = json.loads((root / "adapters" / ADAPTER / "v2" / "loraplane-adapter.json").read_text())
    assert manifest["config"]["lora"]["init_from"] == f"{ADAPTER}@v1"
    assert manifest["config"]["train"]["method"] == "kto"
    gate = it["details"]["gate"]
    assert gate["passed"] and 0 <= gate["stable"] <= 1 and 0 <= gate["new"] <= 1
    assert it["rollout"] == f"{ADAPTER}-v2" and it["details"]["rollout"]["state"] == it["outcome"]
    report = httpx.get(f"{url}/admin/rollouts/{it['rollout']}", headers=ADMIN, timeout=30).json()
    assert report["shadow_percent"] == 100
    audit = httpx.get(f"{url}/admin/audit", params={"subject": it["rollout"]}, headers=ADMIN, timeout=30).json()
    assert any("shadow stage" in json.dumps(r) for r in audit["data"]), audit
