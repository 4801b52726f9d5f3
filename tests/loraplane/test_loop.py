"""`loraplane loop` (loraplane/loop/): one iteration export -> train -> gate -> rollout against the
real gateway, request log and evaluator (SQLite, fake engine), with the commands it runs replaced
by fakes taking the same arguments (fakes/loop_commands.py) so a train can hang until it is
killed. Stage recovery: a loop killed mid-train trains again in a fresh run dir on the next run; a
loop killed mid-rollout does not start a second rollout. Bad input stops before any training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from fakes.servers import wait_for
from loraplane.loop.cli import main as loop_main
from loraplane.loop.cli import open_store
from loraplane.loop.lock import lease_name
from tests.conftest import GatewayThread, free_port
from tests.serving import test_gateway_faults as faults
from tests.serving.rollouts.test_rollout_gateway import FAST, QUICK, gateway_app, users

ROOT = Path(__file__).resolve().parents[2]
dirs = faults.dirs  # the fixture: a base manifest and adapters bot, other, third @v1
FAKE = [sys.executable, "-m", "fakes.loop_commands"]


@pytest.fixture
def served(dirs, tmp_path: Path):
    """The gateway (its store a SQLite file) in front of a fake engine: (gateway, store url, adapters dir)."""
    url = f"sqlite:///{tmp_path / 'control.db'}"
    with (
        faults.engine(**QUICK) as eng,
        GatewayThread(gateway_app(dirs, [eng.url], **{"store.url": url, **FAST}), free_port()) as gw,
    ):
        yield gw, url, dirs[1]


def write_spec(tmp_path: Path, served, **changes) -> Path:
    gw, url, adapters = served
    golden = tmp_path / "golden.jsonl"
    golden.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    config = tmp_path / "train.yaml"
    config.write_text("train: {max_steps: 1}\n")
    spec = {
        "adapter": "bot",
        "gateway": {"url": gw.url, "publish_wait_s": 10},
        "store_url": url,
        "adapters_dir": str(adapters),
        "work_dir": str(tmp_path / "loop"),
        "lock_ttl_s": 1.5,  # a killed run's lease lapses quickly
        "data": {"command": [*FAKE, "export", "--rows", "30"], "min_rows": 20},
        "train": {"config": str(config), "command": [*FAKE, "train"], "overrides": {"train.max_steps": 2}},
        "gate": {"golden": str(golden), "command": [*FAKE, "eval", "--scores", "0.50,0.52"], "margin": 0.02},
        "rollout": {
            "shadow": 100,
            "steps": [50, 100],
            "min_samples": 20,
            "interval_s": 0.3,
            "guards": ["error_rate:0.05"],
            "promote_when": "no_regression",
            "wait_timeout_s": 1,
            "poll_s": 0.2,
        },
    }
    for dotted, value in changes.items():
        node = spec
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
        if value is None:
            del node[leaf]
    path = tmp_path / "bot.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def loop_process(spec: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "loraplane", "loop", "run", str(spec)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True)


def kill(proc: subprocess.Popen, url: str) -> None:
    """The loop and the command it is running (its own process group, started by this test); then
    wait until its adapter lease lapses (spec lock_ttl_s), as the next scheduled run would."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    store = open_store(url)
    try:
        wait_for(lambda: store.lease_holder(lease_name("bot")) is None, timeout_s=10)
    finally:
        store.close()


def iterations(url: str) -> list:
    store = open_store(url)
    try:
        return store.loop_iterations("bot")
    finally:
        store.close()


def rollouts(gw: GatewayThread) -> list[dict]:
    return httpx.get(f"{gw.url}/admin/rollouts", timeout=10).json()["data"]


def test_killed_mid_train_the_next_run_trains_again_in_a_fresh_run_dir(served, tmp_path: Path) -> None:
    gw, url, adapters = served
    marker = tmp_path / "hung"
    spec = write_spec(tmp_path, served, **{"train.command": [*FAKE, "train", "--hang-first", str(marker)]})
    first = loop_process(spec)
    wait_for(marker.exists, timeout_s=30)  # the first train attempt is running
    kill(first, url)
    stopped = iterations(url)[0]
    assert stopped.stage == "train" and stopped.version == "v2"
    assert not (adapters / "bot" / "v2").exists()  # nothing half-written was published
    assert loop_main(["run", str(spec)]) == 3  # resumed at train, then waits on the rollout it started
    it = iterations(url)[0]
    attempts = it.details["train"]["attempts"]
    assert it.id == stopped.id and it.stage == "rollout" and len(attempts) == 2
    assert attempts[0]["out_dir"] != attempts[1]["out_dir"]
    assert (Path(attempts[0]["out_dir"]) / "checkpoint-partial").exists()  # the killed attempt's dir is left alone
    assert (Path(attempts[1]["out_dir"]) / "published").read_text() == "bot@v2"
    assert it.details["gate"]["passed"] and it.method == "kto"
    assert [r["name"] for r in rollouts(gw)] == ["bot-v2"]


def test_killed_mid_rollout_the_next_run_waits_on_it_and_never_starts_a_second(served, tmp_path: Path) -> None:
    gw, url, _ = served
    first = loop_process(write_spec(tmp_path, served, **{"rollout.wait_timeout_s": 600}))
    wait_for(lambda: any(r["name"] == "bot-v2" for r in rollouts(gw)), timeout_s=60)
    kill(first, url)
    assert iterations(url)[0].stage == "rollout"
    spec = write_spec(tmp_path, served)  # the same spec, waiting 1 s on the rollout per run
    report = httpx.get(f"{gw.url}/admin/rollouts/bot-v2", timeout=10).json()
    assert report["stage"] == "shadow" and report["shadow_percent"] == 100
    assert loop_main(["run", str(spec)]) == 3  # still in shadow: no traffic yet
    users(gw.url, 40)  # mirrored to v2, which passes the shadow stage; then 50/50, then promoted
    wait_for(lambda: httpx.get(f"{gw.url}/admin/rollouts/bot-v2", timeout=10).json()["step"] == 0, timeout_s=30)
    users(gw.url, 80, offset=100)
    wait_for(lambda: loop_main(["run", str(spec)]) == 0, timeout_s=30)  # promoted: the iteration is done
    it = iterations(url)[0]
    starts = httpx.get(f"{gw.url}/admin/audit", params={"subject": "bot-v2"}, timeout=10).json()["data"]
    assert [r["name"] for r in rollouts(gw)] == ["bot-v2"]
    assert sum(a["action"] == "rollout.start" for a in starts) == 1
    assert it.stage == "done" and it.outcome == "promoted" and it.details["rollout"]["state"] == "promoted"


def test_the_gate_stops_a_worse_version_with_its_numbers(served, tmp_path: Path, capsys) -> None:
    gw, url, _ = served
    spec = write_spec(tmp_path, served, **{"gate.command": [*FAKE, "eval", "--scores", "0.60,0.40"]})
    assert loop_main(["run", str(spec)]) == 0
    it = iterations(url)[0]
    assert it.stage == "stopped" and it.outcome == "gate_failed"
    assert "bot@v2 exact_match 0.4000 < bot@v1 0.6000 - margin 0.02" in it.reason
    assert rollouts(gw) == []  # not rolled out
    assert loop_main(["status", "--spec", str(spec)]) == 0
    assert "exact_match 0.600->0.400 (FAIL)" in capsys.readouterr().out


def test_too_little_data_stops_before_training(served, tmp_path: Path) -> None:
    _, url, adapters = served
    spec = write_spec(tmp_path, served, **{"data.command": [*FAKE, "export", "--rows", "5"]})
    assert loop_main(["run", str(spec)]) == 0
    it = iterations(url)[0]
    assert it.stage == "stopped" and it.outcome == "too_little_data"
    assert "5 kto rows (kto.jsonl) < data.min_rows 20" in it.reason
    assert it.version is None and not (adapters / "bot" / "v2").exists() and "train" not in it.details


def test_pairs_choose_dpo_and_a_refused_training_input_stops(served, tmp_path: Path) -> None:
    _, url, _ = served
    changes = {
        "data.command": [*FAKE, "export", "--rows", "30", "--pairs", "60"],
        "train.command": [*FAKE, "train", "--exit", "2"],
    }
    assert loop_main(["run", str(write_spec(tmp_path, served, **changes))]) == 0
    it = iterations(url)[0]
    assert it.method == "dpo" and it.outcome == "bad_training_input" and "`label` must be true" in it.reason


def test_unknown_adapter_and_missing_files_are_refused_before_anything_runs(served, tmp_path: Path, capsys) -> None:
    _, url, _ = served
    assert loop_main(["run", str(write_spec(tmp_path, served, adapter="nobody"))]) == 2
    assert "adapter 'nobody' is unknown to the gateway" in capsys.readouterr().err
    missing = write_spec(tmp_path, served, **{"gate.golden": str(tmp_path / "nope.jsonl"), "train.config": "x.yaml"})
    assert loop_main(["run", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "gate.golden" in err and "nope.jsonl" in err and "does not exist" in err and "train.config 'x.yaml'" in err
    assert iterations(url) == []  # nothing recorded, nothing trained


def test_the_real_eval_gates_stable_and_new_through_the_gateway(served, tmp_path: Path) -> None:
    gw, url, _ = served
    spec = write_spec(tmp_path, served, **{"gate.command": None})  # `python -m loraplane eval`, the default
    assert loop_main(["run", str(spec)]) == 3  # gated, rolled out, and waiting on the rollout
    gate = iterations(url)[0].details["gate"]
    replies = (Path(gate["dir"]) / "replies-bot@v2.jsonl").read_text().splitlines()
    assert gate["passed"] and gate["metric"] == "exact_match" and len(replies) == 1  # the golden set's one row
    assert gate["stable"] == gate["new"]  # the fake engine answers both versions alike
    assert [r["name"] for r in rollouts(gw)] == ["bot-v2"]


def test_the_train_command_the_loop_composes_is_what_loraplane_train_accepts(served, tmp_path: Path, capsys) -> None:
    import json

    from loraplane.loop.gateway import Gateway
    from loraplane.loop.iteration import Loop
    from loraplane.loop.spec import load_spec
    from serving.store.loop import LoopIteration
    from trainer.cli import main as train_main

    changes = {"train.config": str(ROOT / "configs/train/demo-kto.yaml"), "train.command": None}
    spec = load_spec(write_spec(tmp_path, served, **changes))
    export = {"file": str(tmp_path / "kto.jsonl")}
    it = LoopIteration(1, "bot", "train", 0.0, 0.0, stable="v1", version="v2", method="kto", details={"export": export})
    argv = Loop(spec, None, Gateway(spec.gateway)).train_command(it, tmp_path / "run")  # type: ignore[arg-type]
    assert argv[:4] == [sys.executable, "-m", "loraplane", "train"]
    assert train_main([*argv[4:], "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["lora"]["init_from"] == "bot@v1" and cfg["train"]["method"] == "kto"
    assert cfg["data"]["train"] == export["file"] and cfg["out_dir"] == str(tmp_path / "run")
    assert cfg["publish"] == {**cfg["publish"], "enabled": True, "name": "bot", "version": "v2"}
    assert cfg["train"]["max_steps"] == 2  # the spec's overrides


def test_the_shipped_loop_spec_loads() -> None:
    from loraplane.loop import spec as loop_spec

    spec = loop_spec.load_spec(ROOT / "configs/loop/demo-json.yaml")
    assert spec.adapter == "demo-json" and spec.train.config.is_file() and spec.gate.golden.is_file()
    assert spec.rollout.shadow == 100 and spec.data.method == "auto"


def test_the_shipped_loop_rollout_is_valid_against_the_demo_gateway() -> None:
    """The loop's rollout settings make a RolloutSpec the demo's gateway accepts: its grader guard
    and better_on name a grader configs/serving/demo.yaml configures."""
    from loraplane.loop import spec as loop_spec
    from serving.config import load_config
    from serving.rollouts.policy import GuardSpec

    r = loop_spec.load_spec(ROOT / "configs/loop/demo-json.yaml").rollout
    cfg = load_config(ROOT / "configs/serving/demo.yaml")
    guards = tuple(GuardSpec.parse(g) for g in r.guards or [])
    rollout = cfg.rollouts.spec(guards=guards, promote_when=r.promote_when, better_on=r.better_on, min_gain=r.min_gain)
    assert rollout.better_on in {g.metric for g in guards} and rollout.min_gain == r.min_gain
    assert {g.grader for g in guards if g.grader} <= {g.name for g in cfg.graders}


def test_an_interval_trigger_records_nothing_until_it_is_due(served, tmp_path: Path, capsys) -> None:
    _, url, _ = served
    failing_gate = {"gate.command": [*FAKE, "eval", "--scores", "0.60,0.40"], "trigger.interval_s": 3600}
    assert loop_main(["run", str(write_spec(tmp_path, served, **failing_gate))]) == 0  # trained, gate stopped it
    assert loop_main(["run", str(write_spec(tmp_path, served, **failing_gate))]) == 0
    assert "not due (trigger.interval_s)" in capsys.readouterr().out
    assert [it.outcome for it in iterations(url)] == ["gate_failed"]  # the second run recorded nothing


def test_a_second_run_for_the_adapter_is_refused_while_one_holds_it(served, tmp_path: Path, capsys) -> None:
    _, url, _ = served
    store = open_store(url)
    try:
        assert store.acquire_lease(lease_name("bot"), "other-host:1", 60) is not None
        assert loop_main(["run", str(write_spec(tmp_path, served))]) == 3
        assert "another `loraplane loop run` for 'bot' is running (other-host:1)" in capsys.readouterr().err
        assert iterations(url) == []  # nothing begun
        store.release_lease(lease_name("bot"), "other-host:1")
        assert loop_main(["run", str(write_spec(tmp_path, served))]) == 3  # now it runs (and waits on its rollout)
        assert store.lease_holder(lease_name("bot")) is None  # released when the run ended
    finally:
        store.close()


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"promote_when": "no_regression", "min_gain": 0.05}, "min_gain applies to promote_when 'better' only"),
        ({"better_on": "error_rate"}, "must be feedback or grader:NAME"),
        ({"better_on": "grader:Bad Name"}, "grader name must match"),
        ({"better_on": "grader:other", "guards": ["grader:grounded:0"]}, "is not among rollout.guards"),
    ],
)
def test_a_rollout_rule_the_gateway_would_refuse_fails_the_spec_before_training(settings, named, tmp_path) -> None:
    from loraplane.loop import spec as loop_spec

    data = yaml.safe_load((ROOT / "configs/loop/demo-json.yaml").read_text())
    data["rollout"].update(settings)
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises((ValueError, SystemExit)) as raised:
        loop_spec.load_spec(path)
    assert named in str(raised.value), raised.value


def test_min_gain_0_in_a_loop_spec_switches_the_gateways_default_off(tmp_path) -> None:
    """The gateway (POST /admin/rollouts, --min-gain 0) reads min_gain 0 as "no futility rule for
    this rollout"; the loop spec refused 0 (gt=0), so a loop could not switch a configured
    rollouts.min_gain off."""
    from loraplane.loop import spec as loop_spec
    from serving.config import RolloutsConfig
    from serving.rollouts.policy import GuardSpec

    data = yaml.safe_load((ROOT / "configs/loop/demo-json.yaml").read_text())
    data["rollout"].update({"min_gain": 0, "promote_when": "better"})
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(data))
    r = loop_spec.load_spec(path).rollout
    assert r.min_gain == 0
    guards = tuple(GuardSpec.parse(g) for g in r.guards or [])
    spec = RolloutsConfig(min_gain=0.05).spec(guards=guards, promote_when=r.promote_when, better_on=r.better_on,
                                              min_gain=r.min_gain)  # fmt: skip
    assert spec.min_gain is None
