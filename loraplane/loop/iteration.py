"""One loop iteration as a visible sequence of stages, each recorded in the control-plane store
(loop_iterations) before the next begins, so a crash resumes at the stage it stopped in:

    export  -> the adapter's rated traffic as training files (`loraplane feedback export`, or a
               rollout's `loraplane rollout export`); trigger and min_rows checked on its manifest
    train   -> `loraplane train` from the stable version (lora.init_from) into a fresh run dir,
               publishing the next version (atomic: a killed train publishes nothing)
    gate    -> `loraplane eval` of stable and new on the frozen golden set; new < stable - margin
               stops the iteration with the numbers
    rollout -> `POST /admin/rollouts/ADAPTER-vN` (with its shadow stage), recorded before it is
               sent and looked up before it is sent again, then waited on until promoted or rolled back
    done | stopped (with the reason: not due, too little data, bad training input, gate failed)

A stage that cannot finish now (gateway down, a command crashed) raises LoopError: the iteration
stays at that stage and the next run retries it (a train attempt always in a new run dir).
"""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraplane.loop.errors import LoopError
from loraplane.loop.gateway import VERSION_NUMBER, Gateway
from loraplane.loop.spec import LoopSpec
from serving.store import Store
from serving.store.loop import LoopIteration

EXPORT_FILES = {"kto": "kto.jsonl", "dpo": "preferences.jsonl", "sft": "sft.jsonl"}
TERMINAL_ROLLOUT = ("promoted", "rolled_back")
PR_SET_PDEATHSIG = 1  # linux/prctl.h
LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
BAD_INPUT_EXIT = 2  # loraplane commands exit 2 on bad input (a one-line error on stderr)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In the child before exec (Linux): send it `sig` when its parent dies, so a killed `loop run`
    leaves no orphan trainer behind to publish the version the next run trains again (and a killed
    demo no orphan gateway)."""
    if LIBC is not None:  # loaded before the fork: the child only calls it (threads: no imports there)
        LIBC.prctl(PR_SET_PDEATHSIG, int(sig))


def run_command(argv: list[str]) -> tuple[int, str]:
    """Run a loraplane command as a process (its stdout passes through); (exit code, stderr tail).
    The command dies with the loop (die_with_parent): a crash never leaves it running on its own."""
    proc = subprocess.run(argv, stderr=subprocess.PIPE, text=True, check=False, preexec_fn=die_with_parent)
    sys.stderr.write(proc.stderr[-4000:])
    return proc.returncode, proc.stderr.strip()[-500:]


def loraplane(*words: str) -> list[str]:
    return [sys.executable, "-m", "loraplane", *words]


def choose_method(spec: LoopSpec, rows: dict[str, int]) -> str:
    """data.method, or auto: dpo with enough pairs, else kto on unpaired ratings, else sft."""
    if spec.data.method != "auto":
        return spec.data.method
    if rows.get("preferences.jsonl", 0) >= spec.data.dpo_min_pairs:
        return "dpo"
    return "kto" if rows.get("kto.jsonl", 0) else "sft"


@dataclass
class Loop:
    spec: LoopSpec
    store: Store
    gateway: Gateway
    run: Callable[[list[str]], tuple[int, str]] = run_command
    say: Callable[[str], None] = print
    clock: Callable[[], float] = time.time
    stages: dict[str, Callable[[LoopIteration], LoopIteration]] = field(init=False)

    def __post_init__(self) -> None:
        self.stages = {"export": self.export, "train": self.train, "gate": self.gate, "rollout": self.rollout}

    # --- the iteration ---------------------------------------------------------------------------

    def run_once(self) -> LoopIteration | None:
        """Resume the adapter's unfinished iteration, or begin one when it is due (None: not due,
        nothing recorded); run its stages until it ends (done / stopped) or a stage cannot finish
        now (LoopError: the next run retries)."""
        adapter = self.spec.adapter
        versions, stable = self.gateway.versions(adapter)  # unknown adapter: an error before anything
        it = self.store.open_iteration(adapter)
        if it is None and (due := self.next_due()) is not None and self.clock() < due:
            self.say(f"loop {adapter}: not due (trigger.interval_s): the next iteration may begin at {due:.0f}")
            return None
        if it is None:
            it = self.store.start_iteration(adapter, stable=stable)
            self.say(f"loop {adapter}: iteration {it.id} from {adapter}@{stable} (published: {', '.join(versions)})")
        else:
            self.say(f"loop {adapter}: resuming iteration {it.id} at stage {it.stage}")
        while it.open:
            it = self.stages[it.stage](it)
        self.say(f"loop {adapter}: iteration {it.id} {it.stage}: {it.outcome} ({it.reason})")
        return it

    def next_due(self) -> float | None:
        """When trigger.interval_s lets the next iteration begin (None: no interval, or none trained yet)."""
        last = self.previous()
        interval = self.spec.trigger.interval_s
        return None if interval is None or last is None else last.started_at + interval

    def dir(self, it: LoopIteration, name: str) -> Path:
        return self.spec.work_dir / self.spec.adapter / f"iteration-{it.id}" / name

    def stop(self, it: LoopIteration, outcome: str, reason: str, **details: Any) -> LoopIteration:
        return self.store.update_iteration(
            it.id, stage="stopped", outcome=outcome, reason=reason, details={**it.details, **details}
        )

    def previous(self) -> LoopIteration | None:
        """The newest iteration that trained (its export window ends where the next one's begins)."""
        return next((i for i in self.store.loop_iterations(self.spec.adapter) if i.version and not i.open), None)

    # --- stages ----------------------------------------------------------------------------------

    def export(self, it: LoopIteration) -> LoopIteration:
        spec, out = self.spec, self.dir(it, "export")
        last = self.previous()
        since = (last.details.get("export") or {}).get("until") if last else spec.data.since
        until = self.clock()
        code, err = self.run(self.export_command(out, since, until, last))
        if code != 0:
            raise LoopError(f"export exited {code}: {err}")
        try:
            manifest = json.loads((out / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise LoopError(f"export wrote no readable {out / 'manifest.json'} ({exc})") from None
        rows = {name: int(f.get("rows", 0)) for name, f in manifest.get("files", {}).items()}
        corrections = int(manifest.get("corrections", 0))
        record = {"dir": str(out), "since": since, "until": until, "rows": rows, "corrections": corrections}
        rated = rows.get("kto.jsonl", 0)  # every rated answer is one kto row, and every user's correction
        if spec.trigger.min_new_ratings is not None and rated < spec.trigger.min_new_ratings:
            reason = f"trigger.min_new_ratings: {rated} new rated answers < {spec.trigger.min_new_ratings}"
            return self.stop(it, "not_due", reason, export=record)
        method = choose_method(spec, rows)
        n = rows.get(EXPORT_FILES[method], 0)
        if n < spec.data.min_rows:
            reason = (
                f"export has {n} {method} rows ({EXPORT_FILES[method]}) < data.min_rows {spec.data.min_rows}: "
                "nothing trained"
            )
            return self.stop(it, "too_little_data", reason, export=record, method=method)
        record["file"] = str(out / EXPORT_FILES[method])
        return self.store.update_iteration(
            it.id, stage="train", method=method, details={**it.details, "export": record}
        )

    def export_command(self, out: Path, since: float | None, until: float, last: LoopIteration | None) -> list[str]:
        spec = self.spec
        if spec.data.export == "rollout":
            name = spec.data.rollout or (last.rollout if last else None)
            if name is None:
                raise LoopError("data.export rollout needs data.rollout (no earlier iteration started one)")
            return [
                *(spec.data.command or loraplane("rollout", "export")),
                name,
                "--url",
                spec.gateway.url,
                "--out",
                str(out),
            ]
        argv = [
            *(spec.data.command or loraplane("feedback", "export")),
            "--url",
            spec.gateway.url,
            "--adapter",
            spec.adapter,
        ]
        if since is not None:
            argv += ["--since", repr(float(since))]
        return argv + ["--until", repr(float(until)), "--out", str(out)]

    def train(self, it: LoopIteration) -> LoopIteration:
        adapter = self.spec.adapter
        versions, _ = self.gateway.versions(adapter)
        if it.version is None:  # chosen once: a rerun trains (and publishes) the same version
            newest = max(int(VERSION_NUMBER.match(v).group(1)) for v in versions)  # type: ignore[union-attr]
            it = self.store.update_iteration(it.id, version=f"v{newest + 1}")
        elif it.version in versions:  # published before the crash (publish is atomic): train is done
            return self.store.update_iteration(it.id, stage="gate")
        if not Path(it.details["export"]["file"]).is_file():  # a fresh pod (work dir gone): export again
            return self.store.update_iteration(it.id, stage="export")
        attempts = list((it.details.get("train") or {}).get("attempts", []))
        out = self.dir(it, f"train-{len(attempts) + 1}")  # a fresh run dir for every attempt
        attempts.append({"out_dir": str(out), "started_at": self.clock()})
        it = self.store.update_iteration(it.id, details={**it.details, "train": {"attempts": attempts}})
        self.say(f"loop {adapter}: training {adapter}@{it.version} ({it.method}) from {adapter}@{it.stable} in {out}")
        code, err = self.run(self.train_command(it, out))
        attempts[-1].update(exit_code=code, finished_at=self.clock())
        details = {**it.details, "train": {"attempts": attempts}}
        if code == BAD_INPUT_EXIT:
            return self.stop(it, "bad_training_input", f"loraplane train refused the exported data: {err}", **details)
        if code != 0:
            self.store.update_iteration(it.id, details=details)
            raise LoopError(f"loraplane train exited {code} ({err}); the next run trains again in a fresh run dir")
        self.gateway.wait_listed(adapter, it.version)  # type: ignore[arg-type]
        return self.store.update_iteration(it.id, stage="gate", details=details)

    def train_command(self, it: LoopIteration, out: Path) -> list[str]:
        spec, adapter = self.spec, self.spec.adapter
        values: dict[str, Any] = {
            **spec.train.overrides,
            "out_dir": str(out),
            "train.method": it.method,
            "data.train": it.details["export"]["file"],
            "lora.init_from": f"{adapter}@{it.stable}",
            "publish.enabled": "true",
            "publish.name": adapter,
            "publish.version": it.version,
            "publish.adapters_dir": str(spec.adapters_dir),
        }
        argv = [*(spec.train.command or loraplane("train")), "--config", str(spec.train.config)]
        for key, value in values.items():
            argv += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        return argv

    def gate(self, it: LoopIteration) -> LoopIteration:
        spec, adapter = self.spec, self.spec.adapter
        stable, new = f"{adapter}@{it.stable}", f"{adapter}@{it.version}"
        out = self.dir(it, "gate")
        argv = [*(spec.gate.command or loraplane("eval")), "--url", spec.gateway.url, "--model", stable, "--model", new]
        argv += ["--data", str(spec.gate.golden), "--metrics", spec.gate.metric, "--out", str(out)]
        argv += ["--max-tokens", str(spec.gate.max_tokens), "--api-key-env", spec.gateway.api_key_env]
        code, err = self.run(argv)
        if code != 0:
            raise LoopError(f"loraplane eval exited {code}: {err}")
        try:
            models = json.loads((out / "eval.json").read_text())["models"]
            scores = {"stable": float(models[stable][spec.gate.metric]), "new": float(models[new][spec.gate.metric])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LoopError(f"{out / 'eval.json'} has no {spec.gate.metric} for {stable} and {new} ({exc!r})") from None
        passed = scores["new"] >= scores["stable"] - spec.gate.margin
        record = {**scores, "metric": spec.gate.metric, "margin": spec.gate.margin, "passed": passed, "dir": str(out)}
        details = {**it.details, "gate": record}
        if not passed:
            reason = (
                f"gate: {new} {spec.gate.metric} {scores['new']:.4f} < {stable} {scores['stable']:.4f} - margin "
                f"{spec.gate.margin} on {spec.gate.golden}; not rolled out"
            )
            return self.stop(it, "gate_failed", reason, **details)
        return self.store.update_iteration(it.id, stage="rollout", details=details)

    def rollout(self, it: LoopIteration) -> LoopIteration:
        adapter = self.spec.adapter
        if it.rollout is None:  # recorded before the start is sent: a rerun looks it up, never starts twice
            it = self.store.update_iteration(it.id, rollout=f"{adapter}-{it.version}")
        name = it.rollout
        assert name is not None
        report = self.gateway.rollout(name)
        if report is None:
            report = self.gateway.start_rollout(name, self.rollout_body(it))
            self.say(f"loop {adapter}: rollout {name} started ({report.get('reason')})")
        else:
            self.say(f"loop {adapter}: rollout {name} already started; waiting on it")
        deadline = self.clock() + self.spec.rollout.wait_timeout_s
        while report["state"] not in TERMINAL_ROLLOUT:
            if self.clock() >= deadline:
                raise LoopError(
                    f"rollout {name} is still {report['state']} ({report.get('reason')}) after "
                    f"{self.spec.rollout.wait_timeout_s:g} s; the next `loraplane loop run` waits on"
                )
            time.sleep(self.spec.rollout.poll_s)
            report = self.gateway.rollout(name) or report
        record = {k: report.get(k) for k in ("state", "reason", "step", "stage", "weights", "candidate", "control")}
        details = {**it.details, "rollout": record}
        return self.store.update_iteration(
            it.id, stage="done", outcome=report["state"], reason=report.get("reason"), details=details
        )

    def rollout_body(self, it: LoopIteration) -> dict:
        r = self.spec.rollout
        body = {
            "candidate": f"{self.spec.adapter}@{it.version}",
            "control": f"{self.spec.adapter}@{it.stable}",
            "shadow": r.shadow,
            "steps": r.steps,
            "guards": r.guards,
            "min_samples": r.min_samples,
            "interval_s": r.interval_s,
            "promote_when": r.promote_when,
            "better_on": r.better_on,
            "min_gain": r.min_gain,
            "capture": r.capture,
            "reason": f"loraplane loop iteration {it.id}: {it.method} from {it.stable}, gate {it.details.get('gate')}",
        }
        return {k: v for k, v in body.items() if v is not None}
