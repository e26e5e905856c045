"""Client processes for the etcd tests (importable by the ``spawn`` start method)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import tenure
from tenure.errors import BackendError, LockLostError, NotHeldError
from tests.faults.resource import Store


def contend(url: str, name: str, directory: str, ttl: float, stop: str, max_ops: int) -> None:
    """Acquire ``name`` again and again; inside, a fenced read-modify-write of the store.

    Appends one JSON line per critical section to ``<directory>/<pid>.log``: the token, the
    ``monotonic_ns`` of entering and leaving, and whether the store accepted the write. Backend
    errors (a leader election in progress) are retried; the loop ends when ``stop`` exists.
    """
    store = Store(directory, fenced=True)
    me = f"pid-{os.getpid()}"
    log = Path(directory) / f"{os.getpid()}.log"
    with tenure.connect(url, ttl=ttl) as client, open(log, "a") as out:
        lock = client.lock(name)
        for _ in range(max_ops):
            if os.path.exists(stop):
                return
            try:
                if not lock.acquire(timeout=5 * ttl + 5):
                    continue
            except (BackendError, LockLostError):
                continue
            entered = time.monotonic_ns()
            token = lock.token
            elements = store.read(token, me)
            accepted = elements is not None and store.write(token, me, elements, entered)
            left = time.monotonic_ns()
            # Lost meanwhile (the fence decides), or the release outlived its retries.
            with contextlib.suppress(BackendError, NotHeldError):
                lock.release()
            record = {"token": token, "enter": entered, "exit": left, "ok": accepted}
            out.write(json.dumps(record) + "\n")
            out.flush()
