"""`loraplane serve` and `loraplane adapters`: the serving side's commands."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from serving.config import ServingConfig, load_config
from serving.engines.process import (
    ENGINE_KEY_ENV,
    EngineProcess,
    check_cpu_lora_plugin,
    check_engine_port,
    choose_dtype,
    ensure_engine_key,
    local_engines,
)
from serving.errors import ServingError
from serving.registry import AdapterRegistry, parse_model_name, read_base


def _config_from_args(args: argparse.Namespace) -> ServingConfig:
    overrides: dict[str, object] = {}
    for dotted, value in (
        ("base", args.base),
        ("gateway.port", args.port),
        ("gateway.host", args.host),
        ("engine.replicas", 0 if args.gateway_only else args.replicas),
    ):
        if value is not None:
            overrides[dotted] = value
    if args.engine_url:
        overrides["engines"] = args.engine_url
    return load_config([Path(p) for p in args.config], overrides)


def supervise(engines: list[EngineProcess], stop: threading.Event) -> None:
    """Restart a crashed engine; the gateway's health loop then re-loads its adapters."""
    while not stop.wait(2.0):
        for engine in engines:
            if engine.alive() or stop.is_set():
                continue
            engine.restarts += 1
            print(
                f"engine {engine.index} exited (code {engine.proc.returncode if engine.proc else None}); "
                f"restart #{engine.restarts}",
                file=sys.stderr,
                flush=True,
            )
            try:
                engine.start()  # refuses a port another process took meanwhile (checked again next round)
                engine.wait_healthy()
            except ServingError as exc:
                print(f"engine {engine.index}: {exc}", file=sys.stderr, flush=True)


def start_engines(cfg: ServingConfig, log_dir: Path) -> list[EngineProcess]:
    base = read_base(cfg.registry.models_dir, cfg.base)
    engines = local_engines(cfg, base.path, base.name, log_dir)
    if engines and ensure_engine_key():
        print(f"engines: a random engine key for this run (set {ENGINE_KEY_ENV} to choose one)", flush=True)
    for engine in engines:  # every port first: refuse before starting any engine
        check_engine_port(engine.port, engine.index)
    try:
        for engine in engines:
            engine.start()
        for engine in engines:
            started = time.monotonic()
            print(f"engine {engine.index}: starting vLLM on {engine.url} (log {engine.log_path}) ...", flush=True)
            engine.wait_healthy()
            print(f"engine {engine.index}: healthy after {time.monotonic() - started:.0f} s", flush=True)
    except BaseException:
        for engine in engines:
            engine.stop()
        raise
    return engines


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="loraplane serve", description="vLLM engine(s) + the OpenAI gateway")
    parser.add_argument("--config", action="append", default=[], help="serving YAML (repeatable, merged)")
    parser.add_argument("--base", help="base model name in models/ (overrides the config)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int, help="gateway port")
    parser.add_argument("--replicas", type=int, help="local vLLM engines to start")
    parser.add_argument("--engine-url", action="append", help="an engine already running (repeatable)")
    parser.add_argument("--gateway-only", action="store_true", help="start no engine; use --engine-url/engines")
    parser.add_argument("--log-dir", type=Path, default=Path("runs/serve"))
    args = parser.parse_args(argv)
    engines: list[EngineProcess] = []
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # so `finally` stops engines even mid-start
        signal.signal(sig, _exit_on_signal)
    try:
        cfg = _config_from_args(args)
        check_store(cfg)
        check_servable(cfg)
        engines = start_engines(cfg, args.log_dir)
        threading.Thread(target=supervise, args=(engines, stop), daemon=True).start()
        run_gateway(cfg, [e.url for e in engines] + cfg.engines)
    except ServingError as exc:
        print(f"loraplane serve: error: {exc}", file=sys.stderr)
        return 2
    finally:
        stop.set()
        for engine in engines:
            engine.stop()
    return 0


def check_store(cfg: ServingConfig) -> None:
    """Refuse at start a control-plane database that cannot be reached (before engines start), and
    config experiments that would take an adapter's or the base's traffic."""
    from serving.store import Store

    registry = AdapterRegistry(cfg.registry.adapters_dir, read_base(cfg.registry.models_dir, cfg.base), 1)
    for experiment in cfg.experiments:  # refused, not fatal: a restarted pod would meet the same clash
        if experiment.name in (cfg.base, registry.base.name) or registry.versions(experiment.name):
            print(
                f"loraplane serve: warning: experiments: name {experiment.name!r} clashes with the base or an "
                "adapter of that name, so it is not served as an experiment; rename the experiment (to split "
                "an adapter's own traffic, start a rollout)",
                file=sys.stderr,
                flush=True,
            )
    Store.open(cfg).close()  # also migrates: a fresh SQLite file or an empty database is made ready


def check_servable(cfg: ServingConfig) -> None:
    """Refuse at start a base this machine cannot serve (e.g. 4-bit on an AVX2-only CPU).

    Only where this process starts engines: a gateway-only pod has no vLLM and no GPU of its own.
    """
    from serving.engines.capabilities import check_base_servable

    if cfg.engine.replicas == 0:
        return
    base = read_base(cfg.registry.models_dir, cfg.base)
    check_base_servable(base.path, enable_lora=True, dtype=choose_dtype(cfg.engine.dtype))
    check_cpu_lora_plugin(cfg)


class _GatewayServer:
    """uvicorn without its own signal capture: uvicorn re-raises SIGTERM after shutdown, which
    would kill this process before it stops the engines it started."""

    def __init__(self, app: Any, host: str, port: int):
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self.server = Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
        )

    def run(self) -> None:
        def request_exit(signum: int, _frame: object) -> None:
            self.server.should_exit = True

        previous = {sig: signal.signal(sig, request_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.server.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_gateway(cfg: ServingConfig, engine_urls: list[str]) -> None:
    from serving.gateway.app import create_app

    print(f"gateway: http://{cfg.gateway.host}:{cfg.gateway.port}/v1 -> {', '.join(engine_urls)}", flush=True)
    _GatewayServer(create_app(cfg, engine_urls), cfg.gateway.host, cfg.gateway.port).run()
    print("gateway: stopped", flush=True)


def _admin(gateway: str, action: str, model: str) -> dict:
    name, version = parse_model_name(model)
    if version is None:
        raise ServingError(f"{model!r}: name a version, e.g. {name}@v1")
    headers = (
        {"Authorization": f"Bearer {os.environ['LORAPLANE_ADMIN_KEY']}"} if "LORAPLANE_ADMIN_KEY" in os.environ else {}
    )
    try:
        resp = httpx.post(
            f"{gateway.rstrip('/')}/admin/adapters/{name}/{version}/{action}", headers=headers, json={}, timeout=120
        )
    except httpx.HTTPError as exc:
        raise ServingError(f"gateway {gateway} unreachable: {exc!r}; is `loraplane serve` running?") from None
    if resp.status_code != 200:
        raise ServingError(f"gateway answered {resp.status_code}: {resp.text[:300]}")
    return resp.json()


def eval_summary(manifest: dict) -> str:
    """'exact_match=0.583 (28/48)' from a manifest's eval block; 'eval unknown' when there is none."""
    result = manifest.get("eval") or {}
    value, n = result.get("value"), result.get("n")
    if not isinstance(value, int | float):
        return "eval unknown"
    count = f" ({round(value * n)}/{n})" if isinstance(n, int) and n > 0 else ""
    return f"{result.get('metric', 'metric')}={value:.3f}{count}"


GATEWAY_URL = "http://127.0.0.1:8000"


def adapters_parser() -> argparse.ArgumentParser:
    """--config and --gateway (alias --url) are accepted before or after the action."""
    parser = argparse.ArgumentParser(prog="loraplane adapters", description="the adapter registry")
    config_help = "serving YAML (repeatable, merged; before or after the action)"
    parser.add_argument("--config", action="append", default=[], help=config_help)
    gateway_help = f"a running gateway (default {GATEWAY_URL})"
    parser.add_argument("--gateway", "--url", dest="gateway", default=GATEWAY_URL, help=gateway_help)
    common = argparse.ArgumentParser(add_help=False)  # the action's copies: absent leaves the top-level value
    common.add_argument("--config", action="append", dest="config_after", default=[], help=config_help)
    common.add_argument("--gateway", "--url", dest="gateway", default=argparse.SUPPRESS, help=gateway_help)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", parents=[common], help="versions in the registry: servable, stable, eval")
    pub_help = "validate an adapter directory and publish it as NAME@VERSION"
    pub = sub.add_parser("publish", parents=[common], help=pub_help)
    pub.add_argument("src", type=Path)
    pub.add_argument("model", help="NAME@VERSION, e.g. support-bot@v3")
    pub.add_argument("--base", help="the served base's name, when adapter_config.json names it otherwise")
    for action, help_ in (
        ("load", "load NAME@VERSION into a running gateway's engines"),
        ("unload", "unload NAME@VERSION from a running gateway's engines"),
        ("promote", "make NAME@VERSION the stable version bare NAME resolves to (every replica, audited)"),
    ):
        sub.add_parser(action, parents=[common], help=help_).add_argument("model")
    return parser


def adapters_main(argv: list[str]) -> int:
    args = adapters_parser().parse_args(argv)
    args.config += args.config_after
    try:
        cfg = load_config([Path(p) for p in args.config])
        if args.action in ("load", "unload", "promote"):
            print(json.dumps(_admin(args.gateway, args.action, args.model)))
            return 0
        registry = AdapterRegistry(
            cfg.registry.adapters_dir, read_base(cfg.registry.models_dir, cfg.base), cfg.engine.max_lora_rank
        )
        if args.action == "publish":
            from serving.publish import publish_adapter_dir

            print(f"published {publish_adapter_dir(registry, args.src, args.model, args.base)}")
            return 0
        from serving.adapter_table import table

        print(table(registry, cfg, eval_summary))
    except ServingError as exc:
        print(f"loraplane adapters: error: {exc}", file=sys.stderr)
        return 2
    return 0
