"""Run one engine command and end its whole process tree when `loraplane serve` dies, by any signal.

    python -m serving.engines.reaper PARENT_PID GRACE_S -- vllm-command ...

`loraplane serve` starts each engine through this small process (stdlib only, a few MiB) as the
leader of a new session and process group; the engine command and every process vLLM spawns (engine
core, workers) stay in that group, so `os.killpg` on the engine's pid still reaches all of them.
The reaper watches three things:

- its parent: when `os.getppid()` is no longer PARENT_PID, serve is gone (SIGKILL and OOM kills
  included: no handler of serve's could run then), so it ends the group;
- SIGTERM / SIGINT / SIGHUP sent to it (serve's `EngineProcess.stop()` signals the group): the same;
- the engine: when it exits by itself, the reaper kills what it left in the group and exits with
  the engine's code, so serve's supervisor sees the crash and restarts it on a free port.

Ending the group: SIGTERM, up to GRACE_S for the engine to exit, then SIGKILL to every other member.
The engine gets a parent-death signal (Linux prctl PR_SET_PDEATHSIG, SIGTERM) too, so even a reaper
that is itself SIGKILLed alone does not leave it behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 0.2


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when its parent dies; a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _engine_preexec() -> None:
    """In the forked engine, before exec (the reaper is single-threaded): a parent-death signal."""
    set_parent_death_signal(signal.SIGTERM)


def group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid`, read from /proc (Linux)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def kill_rest_of_group() -> None:
    """SIGKILL every other process in this (the reaper's) process group."""
    me = os.getpid()
    if not Path("/proc/self/stat").is_file():
        os.killpg(os.getpgid(0), signal.SIGKILL)  # no /proc: the group, this process included
        return
    for pid in group_members(os.getpgid(0)):
        if pid != me:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def end_group(proc: subprocess.Popen[bytes], grace_s: float, signal_group: bool) -> None:
    """SIGTERM the group (unless the signal that woke us went to the whole group already: a second
    one makes uvicorn force its exit), wait up to `grace_s` for the engine, then SIGKILL the rest."""
    if signal_group:
        os.killpg(os.getpgid(0), signal.SIGTERM)  # this process only records it (see run)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    kill_rest_of_group()
    proc.wait()


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N -> 128 + N, as a shell does


def run(parent: int, grace_s: float, command: list[str]) -> int:
    asked_to_stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: asked_to_stop.append(signum))
    if os.getppid() != parent:  # serve died before we got here
        return 1
    proc = subprocess.Popen(command, preexec_fn=_engine_preexec)  # noqa: PLW1509 (single-threaded here)
    while proc.poll() is None:
        if asked_to_stop or os.getppid() != parent:
            end_group(proc, grace_s, signal_group=not asked_to_stop)
            return exit_code(proc.returncode)
        time.sleep(POLL_S)
    kill_rest_of_group()  # the engine died: its engine core must not linger, holding memory
    return exit_code(proc.returncode)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m serving.engines.reaper PARENT_PID GRACE_S -- COMMAND ...", file=sys.stderr)
        return 2
    return run(int(argv[0]), float(argv[1]), argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
