"""Shared rate limits (serving/gateway/ratelimit.py): a real Valkey server, two gateway processes."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serving.config import RateLimitConfig
from serving.errors import RateLimited
from serving.gateway.auth import Principal, hash_key
from serving.gateway.ratelimit import RedisLimiter
from serving.metrics import GatewayMetrics
from tests.conftest import REPO, GatewayThread, free_port
from tests.serving.test_gateway_faults import BASE, chat, dirs, engine, gateway_app  # noqa: F401

KEY = {"Authorization": "Bearer k1"}


def auth(limit: int) -> dict:
    return {"enabled": True, "keys": [{"name": "app", "sha256": hash_key("k1"), "rate_limit_per_minute": limit}]}


def start_gateway(cfg_path: Path, port: int, engine_url: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "loraplane", "serve", "--config", str(cfg_path), "--gateway-only"]
    cmd += ["--engine-url", engine_url, "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    proc.terminate()
    raise RuntimeError(f"gateway on {port} did not start: {log.read_text()[-2000:]}")


def test_limit_holds_across_two_gateway_processes(dirs, valkey_url: str, tmp_path: Path) -> None:  # noqa: F811
    models, adapters = dirs
    cfg = {
        "registry": {"models_dir": str(models), "adapters_dir": str(adapters)},
        "auth": auth(6),
        "ratelimit": {"redis_url": valkey_url},
    }
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(cfg))
    procs = []
    with engine(ttft_ms=0, itl_ms=0) as e0:
        try:
            ports = [free_port(), free_port()]
            procs = [
                start_gateway(tmp_path / "serve.yaml", p, e0.url, tmp_path / f"gw-{i}.log") for i, p in enumerate(ports)
            ]
            codes = [chat(f"http://127.0.0.1:{ports[i % 2]}", headers=KEY).status_code for i in range(10)]
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=20)
    assert codes.count(200) == 6 and codes.count(429) == 4, codes  # per process it would be 10 x 200


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_down(dirs, mode: str) -> None:  # noqa: F811
    cfg = {
        "auth.enabled": True,
        "auth.keys": auth(1)["keys"],
        "ratelimit.redis_url": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "ratelimit.on_redis_error": mode,
    }
    with engine() as e0, GatewayThread(gateway_app(dirs, [e0.url], **cfg), free_port()) as gw:
        codes = [chat(gw.url, headers=KEY) for _ in range(3)]
        errors = "loraplane_ratelimit_errors_total 3.0" in httpx.get(f"{gw.url}/metrics").text
    if mode == "open":  # served uncounted (the limit of 1 would refuse the 2nd and 3rd)
        assert [r.status_code for r in codes] == [200, 200, 200] and errors
    else:
        assert [r.status_code for r in codes] == [503, 503, 503] and errors
        assert codes[0].headers["retry-after"] == "1" and "rate-limit store" in codes[0].json()["error"]["message"]


def test_env_overrides_the_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.config import load_config

    monkeypatch.setenv("LORAPLANE_REDIS_URL", "redis://valkey:6379/1")
    assert load_config(None, {"ratelimit.redis_url": "redis://other/0"}).ratelimit.redis_url == "redis://valkey:6379/1"


def test_feedback_has_its_own_shared_bucket(valkey_url: str) -> None:
    principal = Principal(f"fb-{secrets.token_hex(4)}", None, ("*",), 1)

    async def takes() -> str:
        limiter = RedisLimiter(RateLimitConfig(redis_url=valkey_url), valkey_url, GatewayMetrics())
        try:
            await limiter.take(principal)  # the key's one completion this minute
            await limiter.take(principal, "feedback")  # and its one feedback: a bucket of its own
            with pytest.raises(RateLimited) as info:
                await limiter.take(principal, "feedback")
            return info.value.message
        finally:
            await limiter.close()

    message = asyncio.run(takes())
    assert f"key {principal.name!r} is over its limit of 1 feedback per minute" in message
