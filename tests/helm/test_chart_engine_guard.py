"""The engine key on every vLLM path: vLLM's --api-key guards /v1/* only, while POST /adapters (load an
adapter from any path) and /invocations answer without it. The chart adds files/engine_key_guard.py as
vLLM --middleware; these tests run the rendered copy, in front of a small app and of vLLM's own app."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
from helm_release import CHART_DIR, PREFIX, engine_args
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

KEY = "k" * 48
GUARD_FILE = CHART_DIR / "files" / "engine_key_guard.py"


def rendered_guard_source(release) -> str:
    return release.find("ConfigMap", f"{PREFIX}-engine-key-guard")["data"]["engine_key_guard.py"]


def load_guard(source: str) -> types.ModuleType:
    module = types.ModuleType("engine_key_guard")
    exec(compile(source, "engine_key_guard.py", "exec"), module.__dict__)
    return module


def test_engines_run_the_rendered_guard_as_vllm_middleware(release):
    assert rendered_guard_source(release).strip() == GUARD_FILE.read_text().strip()
    container = release.container(release.engine, "engine")
    middleware = engine_args(release)["--middleware"]
    module, _, cls = middleware.rpartition(".")
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[env["PYTHONPATH"]]["readOnly"] is True  # vLLM imports the module from the mount
    volume = {v["name"]: v for v in release.pod_spec(release.engine)["volumes"]}[mounts[env["PYTHONPATH"]]["name"]]
    assert volume["configMap"]["name"] == f"{PREFIX}-engine-key-guard"
    assert module == GUARD_FILE.stem and hasattr(load_guard(rendered_guard_source(release)), cls)
    assert "checksum/key-guard" in release.engine["spec"]["template"]["metadata"]["annotations"]


def test_the_guard_can_be_turned_off(render):
    release = render({"engine": {"apiKey": {"guardAllPaths": False}}})
    assert "--middleware" not in engine_args(release)
    assert not [c for c in release.kinds("ConfigMap") if c["metadata"]["name"].endswith("key-guard")]
    env = {e["name"] for e in release.container(release.engine, "engine")["env"]}
    assert "VLLM_API_KEY" in env  # vLLM's own /v1 guard stays


@pytest.fixture
def guarded(releases, monkeypatch) -> TestClient:
    monkeypatch.setenv("LORAPLANE_ENGINE_API_KEY", KEY)
    guard = load_guard(rendered_guard_source(releases["default"]))

    async def ok(request):
        return PlainTextResponse(f"reached {request.url.path}")

    async def ws(websocket):
        await websocket.accept()
        await websocket.send_text("open")
        await websocket.close()

    app = Starlette(
        routes=[Route("/{path:path}", ok, methods=["GET", "HEAD", "POST", "DELETE"]), WebSocketRoute("/ws", ws)]
    )
    return TestClient(guard.EngineKeyGuard(app))


@pytest.mark.parametrize(
    ("method", "path", "header", "status"),
    [
        ("GET", "/health", None, 200),
        ("GET", "/metrics", None, 200),
        ("HEAD", "/ping", None, 200),
        ("POST", "/adapters", None, 401),
        ("POST", "/invocations", None, 401),
        ("POST", "/v1/load_lora_adapter", None, 401),
        ("POST", "/health", None, 401),  # open paths are GET/HEAD only
        ("GET", "/metrics/../adapters", None, 401),
        ("POST", "/adapters", "Bearer wrong", 401),
        ("POST", "/adapters", KEY, 401),  # no scheme
        ("POST", "/adapters", f"Basic {KEY}", 401),
        ("POST", "/adapters", f"Bearer {KEY}", 200),
        ("POST", "/adapters", f"bearer {KEY}", 200),
        ("DELETE", "/adapters/x", f"Bearer {KEY}", 200),
    ],
)
def test_every_path_but_probes_needs_the_engine_key(guarded, method, path, header, status):
    headers = {"Authorization": header} if header else {}
    response = guarded.request(method, path, headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        error = response.json()["error"]
        assert error["type"] == "authentication_error" and "engine key" in error["message"]


def test_websockets_need_the_key_too(guarded):
    with pytest.raises(WebSocketDisconnect), guarded.websocket_connect("/ws"):
        pass
    with guarded.websocket_connect("/ws", headers={"Authorization": f"Bearer {KEY}"}) as socket:
        assert socket.receive_text() == "open"


def test_the_guard_refuses_to_start_without_a_key(releases, monkeypatch):
    monkeypatch.delenv("LORAPLANE_ENGINE_API_KEY", raising=False)
    guard = load_guard(rendered_guard_source(releases["default"]))
    with pytest.raises(RuntimeError, match="LORAPLANE_ENGINE_API_KEY is empty"):
        guard.EngineKeyGuard(Starlette())


@pytest.mark.slow
def test_vllms_own_app_behind_the_guard_refuses_adapter_loads_without_the_key(releases, tmp_path, monkeypatch):
    """vLLM's real FastAPI app (no engine behind it) built from the chart's engine args: without the guard
    its POST /adapters passes --api-key; with it, 401. A 500 below means the request reached vLLM's
    handler (no engine state), i.e. got past every key check."""
    release = releases["default"]
    (tmp_path / "engine_key_guard.py").write_text(rendered_guard_source(release))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LORAPLANE_ENGINE_API_KEY", KEY)
    monkeypatch.setenv("VLLM_API_KEY", KEY)  # as the chart sets it: vLLM's --api-key from the env
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    sys.modules.pop("engine_key_guard", None)
    importlib.invalidate_caches()
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = engine_args(release)
    flags = ["--model", "unused", "--enable-lora"]

    def client(*extra: str) -> TestClient:
        parsed = make_arg_parser(FlexibleArgumentParser()).parse_args(flags + list(extra))
        return TestClient(build_app(parsed, supported_tasks=("generate",)), raise_server_exceptions=False)

    load = {"name": "x", "src": "/anywhere"}
    bare = client()
    assert bare.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/anywhere"}).status_code == 401
    assert bare.post("/adapters", json=load).status_code != 401  # the hole: vLLM's key does not cover it
    guarded = client(f"--middleware={args['--middleware']}")
    assert guarded.post("/adapters", json=load).status_code == 401
    assert guarded.post("/invocations", json={"prompt": "hi"}).status_code == 401
    assert guarded.post("/adapters", json=load, headers={"Authorization": f"Bearer {KEY}"}).status_code != 401
    assert guarded.get("/metrics").status_code == 200
    assert Path(sys.modules["engine_key_guard"].__file__).parent == tmp_path
