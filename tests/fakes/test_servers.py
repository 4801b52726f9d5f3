"""fakes/servers.py: free loopback ports and ASGI apps served from a thread."""

from __future__ import annotations

import socket

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from fakes.servers import ServerThread, free_port


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # raises if something holds it


def test_server_thread_serves_and_stops() -> None:
    app = FastAPI()
    app.get("/health")(lambda: {"ok": True})
    with ServerThread(app) as server:
        assert httpx.get(f"{server.url}/health").json() == {"ok": True}
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/health", timeout=1)


def test_server_thread_waits_for_an_accepted_health_status() -> None:
    app = FastAPI()
    app.get("/health")(lambda: JSONResponse({"engines": 0}, status_code=503))
    with ServerThread(app, ready_statuses=(200, 503)) as server:
        assert httpx.get(f"{server.url}/health").status_code == 503
