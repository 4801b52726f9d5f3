"""The demo's rollouts, decided by the gateway's evaluator on simulated users (loraplane/demo_users.py).

1. `promote_on_evidence`: v1 stable, v2 rolled out 20% -> 50% -> 100% under the default rule
   `better` and the default guards (error rate, TTFT p95, feedback). Users rate answers (exact match
   against the held-out reference); the evaluator promotes v2 only once the feedback guard's
   always-valid interval on v2 - v1 excludes 0, and the demo prints that interval.
2. `roll_back_broken`: a candidate published with a corrupted weights file (8 stray bytes after the
   tensors: its header and shapes pass `adapters publish`, vLLM's safetensors loader refuses it) is
   rolled out against the new stable version while users keep asking; the evaluator must roll it
   back by itself within 2 evaluation intervals, and the demo counts how many users got an answer.

Everything goes through the public surface: `loraplane rollout|adapters ...` (subprocesses) and HTTP
with the real `openai` client; this module imports neither the gateway nor the trainer.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, wait
from itertools import islice
from pathlib import Path

import httpx
import openai

from loraplane.demo_report import CONCURRENCY, user_pool
from loraplane.demo_users import Request, population, traffic

ADAPTER, BASE = "demo-json", "smollm2-135m-instruct"
V2_ROLLOUT, BROKEN_ROLLOUT = "demo-json-v2", "demo-json-broken"
WAVE = 16  # answers between two looks at the rollout's status (CONCURRENCY requests stay in flight)
# Default rule (`better`) and default guards; sizes for a 135M model on 2 CPU cores: 20 requests per
# variant per step, an evaluation every 5 s. v2's gain over the short v1 (configs/train/demo*.yaml)
# is shown after a median of 320-450 requests from the demo's users (benchmarks/demo_power.py); a
# candidate that fails to load needs a handful of failed requests.
V2_FLAGS = ["--steps", "20,50,100", "--min-samples", "20", "--interval", "5"]
BROKEN_INTERVAL_S = 30.0  # 2 intervals carry ~150 requests: >= 20 candidate users at 20% (MIN_UNITS)
BROKEN_FLAGS = ["--steps", "20,50,100", "--min-samples", "20", "--interval", str(BROKEN_INTERVAL_S)]
TERMINAL = ("promoted", "rolled_back")


def loraplane_cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "loraplane", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"loraplane {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def status(url: str, name: str) -> dict:
    """GET /admin/rollouts/NAME (what `loraplane rollout status --json` prints), without a process per look."""
    resp = httpx.get(f"{url}/admin/rollouts/{name}", timeout=30)
    resp.raise_for_status()
    return resp.json()


def decision_report(url: str, name: str) -> dict | None:
    """The report the evaluator decided on (the audit record of its promote/rollback), or None."""
    resp = httpx.get(f"{url}/admin/audit", params={"subject": name, "limit": 10_000}, timeout=30)
    resp.raise_for_status()
    decisions = [r for r in resp.json()["data"] if (r.get("numbers") or {}).get("outcome") in ("promote", "rollback")]
    return decisions[-1]["numbers"]["report"] if decisions else None


def rate(example: dict, answer: str, version: str | None) -> float:
    """A simulated user's rating: 1 when the answer is exactly the held-out reference, else 0 (the
    user does not know the version; tests replace this to script a difference on a fake engine)."""
    return float(answer.strip() == example["messages"][-1]["content"])


def ask(client: openai.OpenAI, url: str, examples: list[dict], request: Request) -> dict:
    """One request of a user; the user rates the answer when they are in the mood (request.rates)."""
    example = examples[request.example]
    messages = [m for m in example["messages"] if m["role"] != "assistant"]
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=ADAPTER, messages=messages, temperature=0, max_tokens=64, user=request.user.id
        )
    except openai.APIStatusError as exc:
        return {"user": request.user.id, "status": exc.status_code, "version": None, "score": None}
    except openai.APIConnectionError:
        return {"user": request.user.id, "status": 0, "version": None, "score": None}
    answer, version = raw.parse(), raw.headers.get("x-loraplane-adapter")
    score = rate(example, answer.choices[0].message.content or "", version) if request.rates else None
    corrected = score is not None and score < 1 and request.corrects  # the user also says what it should have been
    if score is not None:
        rating: dict = {"id": answer.id, "score": score}
        if corrected:
            rating["correction"] = example["messages"][-1]["content"]
        httpx.post(f"{url}/v1/feedback", json=rating, timeout=30).raise_for_status()
    return {"user": request.user.id, "status": 200, "version": version, "score": score, "corrected": corrected}


def send(url: str, name: str, examples: list[dict], requests: list[Request], deadline_s: float) -> tuple[list, dict]:
    """Send `requests` until the rollout ends, the requests run out or the deadline passes.

    Users do not wait for each other: CONCURRENCY requests stay in flight, and the rollout's status is
    read after every WAVE answers. Once it is decided (or the deadline passed) nothing new is sent, and
    the requests already sent are waited for and counted."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0, timeout=300)
    rows: list[dict] = []
    report = status(url, name)
    queue = iter(requests)
    with user_pool() as pool:
        in_flight = {pool.submit(ask, client, url, examples, r) for r in islice(queue, CONCURRENCY)}
        answered_since_look = 0
        while in_flight:
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            rows += [f.result() for f in done]
            answered_since_look += len(done)
            if answered_since_look >= WAVE:
                answered_since_look = 0
                report = status(url, name)
                print(f"  {progress(rows)}: {report['state']} at {report['step_percent']}% ({report['reason']})")
                if report["state"] in TERMINAL or time.monotonic() > deadline_s:
                    rows += [f.result() for f in in_flight]  # sent: wait for their answers, send nothing new
                    return rows, status(url, name)
            in_flight |= {pool.submit(ask, client, url, examples, r) for r in islice(queue, len(done))}
    return rows, status(url, name)


def progress(rows: list[dict]) -> str:
    users, rated = len({r["user"] for r in rows}), sum(r["score"] is not None for r in rows)
    return f"{len(rows):>4} requests from {users:>3} users ({rated} rated)"


def feedback_evidence(report: dict) -> dict:
    """The feedback guard's always-valid interval, turned into candidate - control (+ = better)."""
    guard = next(g for g in report["guards"] if g["metric"] == "feedback")
    lo, hi = guard["worsening_lo"], guard["worsening_hi"]
    return {
        "verdict": guard["verdict"],
        "candidate_mean": guard["candidate"]["mean"],
        "candidate_n": guard["candidate"]["n"],
        "control_mean": guard["control"]["mean"],
        "control_n": guard["control"]["n"],
        "gain_lo": None if hi is None else -hi,
        "gain_hi": None if lo is None else -lo,
        "level": 1 - report["alpha"] / len(report["guards"]),  # alpha split over the guards (Bonferroni)
    }


def describe_evidence(ev: dict) -> str:
    if ev["gain_lo"] is None:
        return f"feedback: verdict {ev['verdict']} (too few ratings for an interval)"
    excludes = "excludes 0" if ev["gain_lo"] > 0 or ev["gain_hi"] < 0 else "contains 0"
    return (
        f"feedback (exact match) candidate {ev['candidate_mean']:.3f} (n={ev['candidate_n']}) vs control "
        f"{ev['control_mean']:.3f} (n={ev['control_n']}): difference {ev['candidate_mean'] - ev['control_mean']:+.3f}, "
        f"always-valid {ev['level']:.1%} interval [{ev['gain_lo']:+.3f}, {ev['gain_hi']:+.3f}] -> {excludes}; "
        f"verdict {ev['verdict']}"
    )


def promote_on_evidence(
    url: str, examples: list[dict], out_dir: Path, max_users: int, budget_s: float, flags: list[str] = V2_FLAGS
) -> dict:
    """Rollout 1: v2 against stable v1 under the default rule; users until the evaluator decides."""
    print(loraplane_cli("rollout", "--url", url, "start", V2_ROLLOUT, "--candidate", f"{ADAPTER}@v2", *flags))
    requests = traffic(population(max_users, len(examples), seed=7), seed=8)
    rows, report = send(url, V2_ROLLOUT, examples, requests, time.monotonic() + budget_s)
    report = wait_decided(url, V2_ROLLOUT, report, 15)
    print(loraplane_cli("rollout", "--url", url, "status", V2_ROLLOUT, "--plot", str(out_dir / "rollout.png")))
    evidence = feedback_evidence(decision_report(url, V2_ROLLOUT) or report)  # the numbers it decided on
    decided = report["state"] == "promoted" and evidence["verdict"] == "better"
    print(f"rollout {V2_ROLLOUT}: {report['state']} ({report['reason']}) after {progress(rows)}")
    print(f"  {describe_evidence(evidence)}")
    return {
        "requests": len(rows),
        "users": len({r["user"] for r in rows}),
        "rated": sum(r["score"] is not None for r in rows),
        "promoted_on_evidence": decided,
        "evidence": evidence,
        "report": report,
        "plot": str(out_dir / "rollout.png"),
    }


def wait_decided(url: str, name: str, report: dict, seconds: float) -> dict:
    deadline = time.monotonic() + seconds  # the last wave may still be under evaluation
    while report["state"] == "running" and time.monotonic() < deadline:
        time.sleep(1)
        report = status(url, name)
    return report


def corrupt_copy(src: Path, dst: Path) -> None:
    """Copy the PEFT files of `src` to `dst` (no manifest: no eval claimed) and append 8 stray bytes to
    the weights: header and shapes stay valid, but safetensors refuses the file ("not fully
    covered") when vLLM loads it -- a corrupted upload."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(src / name, dst / name)
    with (dst / "adapter_model.safetensors").open("ab") as weights:
        weights.write(b"\0" * 8)


def publish_broken(config: Path, adapters_dir: Path, work_dir: Path) -> str:
    """Publish a corrupted copy of v2 as the next free version; returns NAME@VERSION."""
    broken = work_dir / "broken-adapter"
    corrupt_copy(adapters_dir / ADAPTER / "v2", broken)
    taken = [int(p.name[1:]) for p in (adapters_dir / ADAPTER).glob("v[0-9]*") if p.name[1:].isdigit()]
    model = f"{ADAPTER}@v{max(taken, default=0) + 1}"
    print(loraplane_cli("adapters", "--config", str(config), "publish", str(broken), model, "--base", BASE).strip())
    return model


def decision_seconds(report: dict) -> float | None:
    """Seconds from the rollout's start to its last evaluation, both on the database's clock: when
    the evaluator decided (the users' waves, and so the client's clock, end a few seconds later)."""
    created, evaluated = report.get("created_at"), report.get("evaluated_at")
    return None if created is None or evaluated is None else float(evaluated) - float(created)


def roll_back_broken(url: str, examples: list[dict], candidate: str, interval_s: float = BROKEN_INTERVAL_S) -> dict:
    """Rollout 2: a broken candidate against the stable version; users for 2 intervals (+ a tick)."""
    flags = [*BROKEN_FLAGS[:-1], str(interval_s)]
    print(loraplane_cli("rollout", "--url", url, "start", BROKEN_ROLLOUT, "--candidate", candidate, *flags))
    started = time.monotonic()
    requests = traffic(population(400, len(examples), seed=11, prefix="user-b"), seed=12)
    rows, report = send(url, BROKEN_ROLLOUT, examples, requests, started + 2 * interval_s + 2)
    elapsed = time.monotonic() - started
    answered = sum(r["status"] == 200 for r in rows)
    decided_s = decision_seconds(report)
    on_time = report["state"] == "rolled_back" and decided_s is not None and decided_s <= 2 * interval_s + 2
    verdict = (
        f"rolled back by itself {decided_s:.0f} s after it started ({decided_s / interval_s:.1f} intervals of "
        f"{interval_s:g} s): {report['reason']}"
        if on_time and decided_s is not None
        else f"NOT rolled back within 2 intervals ({2 * interval_s:g} s): {report['state']}, {report['reason']}"
    )
    print(f"rollout {BROKEN_ROLLOUT} ({candidate}): {verdict}")
    statuses = Counter(str(r["status"]) for r in rows)
    print(f"  users got an answer for {answered} of {len(rows)} requests; statuses {dict(statuses)}")
    return {
        "candidate": candidate,
        "rolled_back_in_time": on_time,
        "seconds": decided_s if decided_s is not None else elapsed,
        "client_seconds": elapsed,
        "interval_s": interval_s,
        "requests": len(rows),
        "answered": answered,
        "statuses": dict(statuses),
        "answered_by": dict(Counter(str(r["version"]) for r in rows)),
        "report": report,
    }
