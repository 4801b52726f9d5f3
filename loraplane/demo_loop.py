"""The demo's loop step (docs/loop.md): the next version of demo-json from its users' ratings.

1. `rate_stable`: users ask the stable version (v2 after the rollout) about the live traffic
   (data/demo/live.jsonl: the golden set's distribution, names v1 and v2 never trained on, none of
   them a golden prompt) and rate what they get (exact match against the reference, as
   loraplane/demo_users.py rates; a few who rate an answer down also send the right one, POST
   /v1/feedback `correction`): the ratings the loop trains on. The rollouts' users asked the
   golden (held-out) prompts themselves, and the loop's window begins after them (`data.since`), so
   no golden prompt is trained on.
2. `run_loop`: `loraplane loop run` (configs/loop/demo-json.yaml: KTO from the stable version, gated
   on the held-out set, a paired shadow stage on every request, then 10% -> 50% -> 100% under the rule
   `better` on the `grounded` grader) as a
   process; while its rollout runs, new users ask held-out prompts and rate the answers, so the
   gateway's evaluator decides on evidence (or runs out of users: then the iteration is undecided).
3. `write_loop_plot` / `describe_versions`: base -> v1 -> v2 -> the loop's version, held-out exact
   match (the loop's version as its gate measured it: the golden set through the gateway, not
   evaluated a second time), and the iteration. The loop's version is the next free number: v4 in
   the demo, since the broken candidate of step 7 was published as v3.

Like the rest of the demo, this drives the public surface only (CLI processes and HTTP).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import yaml

from loraplane import demo_rollout
from loraplane.demo_report import user_pool
from loraplane.demo_users import population, traffic

LOOP_SPEC = Path("configs/loop/demo-json.yaml")
# Users asking about the live prompts: ~3 requests each (demo_users: Pareto), about half of them rated
# (Beta(1.2, 1.2)): ~140 ratings of ~54 distinct answers, above the spec's trigger and data.min_rows (50).
RATERS = 100
LIVE = Path("data/demo/live.jsonl")
# The loop's rollout sized like the v2 rollout (demo_rollout.V2_FLAGS: benchmarks/demo_power.py).
ROLLOUT = {"min_samples": 20, "interval_s": 5}


def rate_stable(url: str, examples: list[dict], n_users: int = RATERS, seed: int = 21) -> dict:
    """Users ask the stable version (the bare adapter name) and rate the answers; returns counts."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0, timeout=300)
    requests = traffic(population(n_users, len(examples), seed=seed, prefix="rater"), seed=seed + 1)
    with user_pool() as pool:
        rows = list(pool.map(lambda r: demo_rollout.ask(client, url, examples, r), requests))
    rated = [r for r in rows if r["score"] is not None]
    summary = {
        "requests": len(rows),
        "users": len({r["user"] for r in rows}),
        "rated": len(rated),
        "thumbs_up": sum(r["score"] >= 1 for r in rated),
        "corrections": sum(bool(r.get("corrected")) for r in rated),
    }
    print(f"  {demo_rollout.progress(rows)}: {summary['thumbs_up']} of {summary['rated']} ratings are thumbs up, "
          f"{summary['corrections']} thumbs down came with the right answer")  # fmt: skip
    return summary


def write_spec(
    out_dir: Path, url: str, store_url: str, since: float, budget_s: float, shipped: Path = LOOP_SPEC
) -> Path:
    """The shipped spec pointed at this demo's gateway, store and work dir; its window begins at `since`."""
    spec = yaml.safe_load(shipped.read_text())
    spec["gateway"] = {**(spec.get("gateway") or {}), "url": url}
    spec["store_url"] = store_url
    spec["work_dir"] = str(out_dir / "loop")
    spec["data"] = {**(spec.get("data") or {}), "since": since}
    spec["rollout"] = {**(spec.get("rollout") or {}), **ROLLOUT, "wait_timeout_s": budget_s, "poll_s": 2}
    path = out_dir / "loop.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def loop_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loraplane", "loop", *args], capture_output=True, text=True)


def newest_iteration(spec: Path) -> dict | None:
    """The adapter's newest iteration as `loraplane loop status --json` shows it (None: none yet)."""
    out = loop_cli("status", "--spec", str(spec), "--json")
    if out.returncode != 0:
        raise RuntimeError(f"loraplane loop status failed: {out.stderr.strip()}")
    history = json.loads(out.stdout)
    return history[0] if history else None


def run_loop(url: str, spec: Path, examples: list[dict], max_users: int, budget_s: float, seed: int = 31) -> dict:
    """`loraplane loop run SPEC` as a process; users ask and rate while its rollout runs."""
    print(f"$ loraplane loop run {spec}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "loraplane", "loop", "run", str(spec)])
    requests = traffic(population(max_users, len(examples), seed=seed, prefix="user-loop"), seed=seed + 1)
    rows: list[dict] = []
    while proc.poll() is None:
        it = newest_iteration(spec)
        if it is None or it["stage"] != "rollout" or not it["rollout"] or rows:
            time.sleep(2)
            continue
        if demo_rollout_exists(url, it["rollout"]):
            rows, _ = demo_rollout.send(url, it["rollout"], examples, requests, time.monotonic() + budget_s)
    code = proc.wait()
    it = newest_iteration(spec) or {}
    return {
        "exit_code": code,
        "iteration": it,
        "rollout_state": rollout_state(url, it.get("rollout")),
        "requests": len(rows),
        "users": len({r["user"] for r in rows}),
        "rated": sum(r["score"] is not None for r in rows),
    }


def loop_step(url: str, out_dir: Path, store_url: str, prompts: list[dict], max_users: int, budget_s: float) -> dict:
    """Ratings of the stable version on live prompts -> one loop iteration -> its version on the held-out set."""
    live = [json.loads(line) for line in LIVE.read_text().splitlines()]
    since = time.time()  # the loop trains on these ratings only (not the rollouts' golden prompts)
    ratings = rate_stable(url, live)
    spec = write_spec(out_dir, url, store_url, since, budget_s)
    loop = run_loop(url, spec, prompts, max_users, budget_s)
    it = loop["iteration"]
    print(describe_iteration(it))
    return {"ratings": ratings, "loop": loop, "new_version": gated_version(it), "spec": str(spec)}


def gated_version(it: dict) -> dict | None:
    """The loop's version with the held-out exact match its gate measured (the golden set through the
    gateway, beside the stable version's); None when the iteration stopped before its gate."""
    gate = (it.get("details") or {}).get("gate")
    if not it.get("version") or not gate:
        return None
    return {"model": f"{demo_rollout.ADAPTER}@{it['version']}", "exact_match": gate["new"], "source": "gate"}


def failures(step: dict) -> list[str]:
    """What the loop step set out to show and did not (printed; part of the demo's exit code). A gate
    that stops a worse version, or an evaluator that rolls v3 back, is the loop working."""
    it, code = step["loop"]["iteration"], step["loop"]["exit_code"]
    found = []
    if code != 0 and it.get("stage") == "rollout" and step["loop"].get("rollout_state") == "running":
        # The users' budget ran out before the evidence did: the evaluator holds, which is its job.
        print(f"UNDECIDED: rollout {it.get('rollout')} still running when the demo's users stopped; no verdict "
              f"without evidence (`loraplane loop run {step['spec']}` waits for it)")  # fmt: skip
    elif code != 0 or it.get("stage") not in ("done", "stopped"):
        found.append(
            f"the loop iteration did not end (exit {code}, stage {it.get('stage')}: {it.get('reason')}); "
            f"`loraplane loop run {step['spec']}` resumes it"
        )
    elif it.get("stage") == "stopped" and it.get("outcome") != "gate_failed":
        found.append(f"the loop stopped before the gate: {it.get('outcome')} ({it.get('reason')})")
    for failure in found:
        print(f"FAIL: {failure}", file=sys.stderr)
    return found


def rollout_state(url: str, name: str | None) -> str | None:
    """The loop's rollout's state as the gateway reports it (None: no rollout or none readable)."""
    if not name:
        return None
    resp = httpx.get(f"{url}/admin/rollouts/{name}", timeout=30)
    return resp.json().get("state") if resp.status_code == 200 else None


def demo_rollout_exists(url: str, name: str) -> bool:
    return httpx.get(f"{url}/admin/rollouts/{name}", timeout=30).status_code == 200


def label(result: dict) -> str:
    """`v3` for demo-json@v3, `base` for the base model."""
    return result["model"].split("@")[1] if "@" in result["model"] else "base"


def describe_versions(results: list[dict]) -> str:
    """`base 0.000 -> v1 0.167 -> v2 0.583 -> v3 0.604` (held-out exact match)."""
    return " -> ".join(f"{label(r)} {r['exact_match']:.3f}" for r in results)


def describe_iteration(it: dict) -> str:
    """One line: data, method, gate numbers, rollout outcome (or where the iteration stopped)."""
    details = it.get("details") or {}
    rows = (details.get("export") or {}).get("rows") or {}
    gate = details.get("gate")
    gate_text = "no gate" if not gate else (
        f"gate {gate['metric']} {gate['stable']:.3f} -> {gate['new']:.3f} "
        f"({'pass' if gate['passed'] else 'FAIL'}, margin {gate['margin']})"
    )  # fmt: skip
    return (
        f"iteration {it.get('id')}: {it.get('stable')} -> {it.get('version') or '-'} by {it.get('method') or '-'} "
        f"on {rows.get('kto.jsonl', 0)} rated answers ({(details.get('export') or {}).get('corrections', 0)} "
        f"corrections); {gate_text}; rollout {it.get('rollout') or '-'}: "
        f"{it.get('outcome') or _pending(it)}" + (f" ({it['reason']})" if it.get("reason") else "")
    )


def _pending(it: dict) -> str:
    """An iteration without an outcome yet: its rollout still runs (undecided), or the stage it is in."""
    return "undecided, still running" if it.get("stage") == "rollout" else f"at stage {it.get('stage')}"


def write_loop_plot(results: list[dict], it: dict, path: Path) -> Path:
    """Held-out exact match per version (base, v1, v2, v3) with the loop iteration's gate and outcome."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, scores = [label(r) for r in results], [r["exact_match"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(labels, scores, color=["#999999"] + ["#4c72b0"] * (len(labels) - 2) + ["#dd8452"])
    for bar, score in zip(bars, scores, strict=True):
        ax.annotate(f"{score:.3f}", (bar.get_x() + bar.get_width() / 2, score), ha="center", va="bottom")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("held-out exact match")
    outcome = it.get("outcome") or it.get("stage") or "not run"
    ax.set_title(f"loop: {it.get('stable')} -> {it.get('version')} by {it.get('method')}, {outcome}", fontsize=10)
    gate = (it.get("details") or {}).get("gate")
    if gate:
        ax.axhline(gate["stable"] - gate["margin"], color="#c44e52", ls="--", lw=1, label="gate: stable - margin")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
