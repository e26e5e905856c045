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


class Fence:
    """A tiny fenced resource: accepts a write only with a token above every token seen."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, token: int, who: str) -> bool:
        import fcntl

        with open(self.path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            lines = f.read().splitlines()
            highest = max((int(line.split()[0]) for line in lines if line), default=0)
            accepted = token > highest
            if accepted:
                f.write(f"{token} {who} {time.monotonic_ns()}\n")
            return accepted


def lead(url: str, name: str, state: str, fence: str, ttl: float) -> None:
    """Campaign for ``name``; while leader, write the term to the fence every 20 ms.

    Appends lines to ``state``: ``leader <term>``, ``rejected <term>``, ``lost <ns>``.
    """
    client = tenure.connect(url, ttl=ttl)
    election = client.election(name, value=str(os.getpid()))
    election.campaign()
    term = election.term
    resource = Fence(fence)

    def note(text: str) -> None:
        with open(state, "a") as f:
            f.write(text + "\n")

    note(f"leader {term}")
    for _ in range(30_000):  # bounded: 10 minutes at most
        if election.lost.wait(0.02):
            note(f"lost {time.monotonic_ns()}")
            return
        if not resource.write(term, f"pid-{os.getpid()}"):
            note(f"rejected {term}")
