"""`loraplane serve` ends its engines when it dies by any signal, SIGKILL included, and refuses to
start an engine on a port another process holds, naming that process.

The fast tests use a fake engine process tree (an engine that spawns a child, as vLLM spawns its
engine core, and a child that ignores SIGTERM) started by the real `EngineProcess.start()`; the
slow test SIGKILLs a real `loraplane serve` with a real vLLM engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from fakes.servers import free_port
from serving.engines.process import port_in_use
from tests.conftest import BASE_NAME, REPO

# A fake engine: listens on its port, spawns a child that ignores SIGTERM (so only SIGKILL ends
# it), and writes both pids down.
FAKE_ENGINE = """
import json, signal, socket, subprocess, sys, time
port, pids = int(sys.argv[1]), sys.argv[2]
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port)); sock.listen()
open(pids, "w").write(json.dumps({"engine": __import__("os").getpid(), "core": child.pid}))
time.sleep(600)
"""

# `serve` stand-in: the real EngineProcess.start() with the fake engine's command line.
SERVE = """
import sys, time
import serving.engines.process as engine_module
from serving.config import load_config
from serving.engines.process import EngineProcess
from pathlib import Path
engine_module.REAPER_GRACE_S = 1.0
port, pids, logs = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
class FakeEngine(EngineProcess):
    def command(self):
        return [sys.executable, "-c", {fake!r}, str(port), pids]
cfg = load_config(None, {{"engine.port": port, "engine.cpu_lora_ops": "vllm"}})
engine = FakeEngine(cfg, logs, "fake", 0, logs)
engine.start()
print(engine.proc.pid, flush=True)
time.sleep(600)
"""


def running(pid: int) -> bool:
    """True while `pid` exists and is no zombie (a container's pid 1 may not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (children of children included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = entry.joinpath("stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_sigkilled_serve_takes_its_fake_engine_tree_with_it(tmp_path: Path) -> None:
    port, pids_file = free_port(), tmp_path / "pids.json"
    script = SERVE.format(fake=FAKE_ENGINE)
    serve = subprocess.Popen(
        [sys.executable, "-c", script, str(port), str(pids_file), str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stdout is not None
        reaper = int(serve.stdout.readline())
        assert wait_until(pids_file.exists, 30) and wait_until(lambda: port_in_use(port), 10)
        pids = json.loads(pids_file.read_text())
        tree = [reaper, pids["engine"], pids["core"]]
        assert all(map(running, tree))
        os.kill(serve.pid, signal.SIGKILL)
        # The reaper polls every 0.2 s, gives SIGTERM 1 s (REAPER_GRACE_S here), then SIGKILLs the core.
        assert wait_until(lambda: not any(map(running, tree)), 10), [p for p in tree if running(p)]
        assert not port_in_use(port)
    finally:
        serve.kill()
        serve.wait()


def test_engine_that_crashes_leaves_no_child_and_reports_its_code(tmp_path: Path) -> None:
    """The reaper exits with the engine's own code (the supervisor restarts it) and ends its child."""
    from serving.config import load_config
    from serving.engines.process import EngineProcess

    core_pid = tmp_path / "core.pid"
    crash = (
        "import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        f"open({str(core_pid)!r}, 'w').write(str(c.pid)); sys.exit(3)"
    )

    class Crashing(EngineProcess):
        def command(self) -> list[str]:
            return [sys.executable, "-c", crash]

    cfg = load_config(None, {"engine.port": free_port(), "engine.cpu_lora_ops": "vllm"})
    engine = Crashing(cfg, tmp_path, "fake", 0, tmp_path)
    engine.start()
    assert engine.proc is not None and engine.proc.wait(timeout=30) == 3
    assert not running(int(core_pid.read_text()))


def test_stop_ends_the_engine_tree_even_a_child_that_ignores_sigterm(tmp_path: Path, monkeypatch) -> None:
    import serving.engines.process as engine_module
    from serving.config import load_config

    monkeypatch.setattr(engine_module, "REAPER_GRACE_S", 1.0)
    port, pids_file = free_port(), tmp_path / "pids.json"

    class FakeEngine(engine_module.EngineProcess):
        def command(self) -> list[str]:
            return [sys.executable, "-c", FAKE_ENGINE, str(port), str(pids_file)]

    cfg = load_config(None, {"engine.port": port, "engine.cpu_lora_ops": "vllm"})
    engine = FakeEngine(cfg, tmp_path, "x", 0, tmp_path)
    engine.start()
    assert engine.proc is not None and wait_until(pids_file.exists, 30) and wait_until(lambda: port_in_use(port), 10)
    tree = [engine.proc.pid, *json.loads(pids_file.read_text()).values()]
    engine.stop()
    assert wait_until(lambda: not any(map(running, tree)), 5), [p for p in tree if running(p)]
    assert not port_in_use(port)


def stray_listener(port: int) -> tuple[int, subprocess.Popen[bytes]]:
    """A process of ours holding `port`, orphaned (its parent, a shell, exits at once)."""
    listen = f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(600)"
    shell = subprocess.Popen(
        ["sh", "-c", f'{sys.executable} -c "{listen}" >/dev/null 2>&1 & echo $!'], stdout=subprocess.PIPE
    )
    assert shell.stdout is not None
    pid = int(shell.stdout.readline())
    shell.wait()
    assert wait_until(lambda: port_in_use(port), 10)
    return pid, shell


def serve_config(tmp_path: Path, engine_port: int) -> Path:
    config = tmp_path / "serving.yaml"
    config.write_text(
        textwrap.dedent(f"""\
            base: {BASE_NAME}
            registry: {{models_dir: {REPO / "models"}, adapters_dir: {tmp_path / "adapters"}}}
            store: {{url: "sqlite:///{tmp_path / "lp.db"}"}}
            engine: {{port: {engine_port}, replicas: 1}}
            gateway: {{port: {free_port()}}}
            """)
    )
    return config


def test_serve_refuses_a_port_held_by_a_stray_process_naming_its_pid(tmp_path: Path) -> None:
    if not (REPO / "models" / BASE_NAME / "config.json").is_file():
        pytest.skip(f"needs the base model: loraplane base pull {BASE_NAME}")
    port = free_port()
    pid, _ = stray_listener(port)
    try:
        cmd = [sys.executable, "-m", "loraplane", "serve", "--config", str(serve_config(tmp_path, port))]
        out = subprocess.run(
            [*cmd, "--log-dir", str(tmp_path / "logs")], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 2, out.stderr
        assert f"port {port} is already in use by pid {pid}" in out.stderr, out.stderr
        assert f"kill -- -{os.getpgid(pid)}" in out.stderr and "orphan" in out.stderr
        assert "does not use loraplane's CPU LoRA ops" not in out.stderr
        assert not (tmp_path / "logs" / "engine-0.log").exists()  # no engine was started
    finally:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigkilled_serve_ends_its_real_vllm_engine_and_frees_the_port(tmp_path: Path) -> None:
    if not (REPO / "models" / BASE_NAME / "config.json").is_file():
        pytest.fail(f"needs the base model: loraplane base pull {BASE_NAME}")
    engine_port = free_port()
    config = serve_config(tmp_path, engine_port)
    log = (tmp_path / "serve.log").open("wb")
    cmd = [sys.executable, "-m", "loraplane", "serve", "--config", str(config), "--log-dir", str(tmp_path / "logs")]
    serve = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    tree: set[int] = set()
    try:
        healthy = lambda: httpx.get(f"http://127.0.0.1:{engine_port}/health", timeout=2).status_code == 200  # noqa: E731
        assert wait_until(lambda: serve.poll() is None and _quietly(healthy), 600), (tmp_path / "serve.log").read_text()
        tree = descendants(serve.pid)
        assert len(tree) >= 3, tree  # the reaper, vLLM's API server, its engine core
        os.kill(serve.pid, signal.SIGKILL)
        serve.wait()
        assert wait_until(lambda: not any(map(running, tree)), 30), [p for p in tree if running(p)]
        assert not port_in_use(engine_port)
    finally:
        serve.kill()
        for pid in filter(running, tree):  # only when the test failed
            os.kill(pid, signal.SIGKILL)
        log.close()


def _quietly(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except httpx.HTTPError:
        return False
