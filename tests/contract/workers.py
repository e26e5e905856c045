"""Worker functions for multi-process tests (importable by the ``spawn`` start method)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import tenure


def increment(url: str, counter: str, log: str, times: int) -> None:
    """Increment the counter file ``times`` times under the lock, logging each token."""
    with tenure.connect(url) as client:
        lock = client.lock("c")
        for _ in range(times):
            with lock:
                path = Path(counter)
                value = int(path.read_text() or "0")
                time.sleep(0)  # let others run inside the critical section
                path.write_text(str(value + 1))
                with open(log, "a") as f:
                    f.write(f"{lock.token} {os.getpid()}\n")


def hold_forever(url: str, name: str, ready: str, ttl: float) -> None:
    """Acquire ``name``, write our token to ``ready``, then wait to be killed."""
    client = tenure.connect(url, ttl=ttl)
    lock = client.lock(name)
    lock.acquire()
    Path(ready).write_text(str(lock.token))
    time.sleep(600)
