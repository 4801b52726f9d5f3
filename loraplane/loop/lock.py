"""One `loraplane loop run` per adapter at a time: a lease in the control-plane store (the same
leases the rollout evaluator uses), renewed in the background while the run lasts. A run killed
without releasing it blocks the next one for at most `lock_ttl_s`."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from loraplane.loop.errors import LoopError
from serving.store import Store

log = logging.getLogger("loraplane.loop")
MAX_LEASE_NAME = 64  # models.LeaseRow.name


def lease_name(adapter: str) -> str:
    name = f"loop:{adapter}"
    return name if len(name) <= MAX_LEASE_NAME else f"loop:{hashlib.sha256(adapter.encode()).hexdigest()[:59]}"


@contextmanager
def adapter_lock(store: Store, adapter: str, ttl_s: float) -> Iterator[None]:
    """Hold the adapter's loop lease for the block; LoopError naming the holder when another run has it."""
    name, holder = lease_name(adapter), f"{socket.gethostname()}:{os.getpid()}"
    if store.acquire_lease(name, holder, ttl_s) is None:
        raise LoopError(
            f"another `loraplane loop run` for {adapter!r} is running ({store.lease_holder(name)}); "
            f"a run that was killed stops holding it within {ttl_s:g} s"
        )
    done = threading.Event()

    def renew() -> None:
        while not done.wait(ttl_s / 3):
            try:
                store.acquire_lease(name, holder, ttl_s)
            except Exception as exc:  # the store is down: the lease may lapse; the stages fail on their own
                log.warning("loop lease %s not renewed: %s", name, exc)

    thread = threading.Thread(target=renew, name=f"loop-lease-{adapter}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        store.release_lease(name, holder)
