"""In-process servers for tests and benchmarks: a free loopback port, an ASGI app in a thread.

    with ServerThread(create_app(settings)) as server:   # the mock engine, the real gateway, ...
        httpx.get(f"{server.url}/health")

Not a fake itself; it lives beside the fakes because tests and benchmarks start them (and the
real gateway) the same way, and neither may import the other.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(
    url: str, timeout_s: float = 30, statuses: tuple[int, ...] = (200,), alive: Callable[[], bool] = lambda: True
) -> bool:
    """Poll GET url/health until it answers one of `statuses` (True), or time runs out or `alive()` fails."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code in statuses:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy (returned), or fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


class ServerThread:
    """A uvicorn server for an ASGI app on a loopback port (a free one by default), in a daemon thread.

    Entering waits until GET /health answers one of `ready_statuses` (30 s at most).
    """

    def __init__(self, app: Any, port: int | None = None, ready_statuses: tuple[int, ...] = (200,)):
        import uvicorn

        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_statuses = ready_statuses
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        if wait_healthy(self.url, 30, self.ready_statuses, self.thread.is_alive):
            return self
        self.__exit__()
        raise RuntimeError(f"server on {self.url} did not become healthy in 30 s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
