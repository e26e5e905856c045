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


def release_early_then_wait(url: str, name: str, ready: str, ttl: float, hold: float) -> None:
    """Acquire ``name`` with ``min_hold=hold``, release at once, write our token and when the
    acquire was sent (``time.monotonic()``: one clock for the machine's processes) to ``ready``,
    then wait to be killed (during the kept hold)."""
    client = tenure.connect(url, ttl=ttl)
    lock = client.lock(name, min_hold=hold)
    sent = time.monotonic()
    lock.acquire()
    token = lock.token
    lock.release()
    Path(ready).write_text(f"{token} {sent!r}")
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


def read_and_write(url: str, counter: str, log: str, times: int, writer: bool) -> None:
    """The rwlock counter experiment: a writer increments ``counter`` under the write side; a
    reader reads it twice under the read side and logs ``changed`` if it moved in between."""
    with tenure.connect(url) as client:
        rw = client.rwlock("c")
        side = rw.write if writer else rw.read
        for _ in range(times):
            with side:
                path = Path(counter)
                value = int(path.read_text() or "0")
                time.sleep(0)  # let others run inside the critical section
                if writer:
                    path.write_text(str(value + 1))
                    entry = f"w {side.token} {os.getpid()}"
                else:
                    again = int(path.read_text() or "0")
                    entry = f"r {side.token} {os.getpid()}" + (" changed" if again != value else "")
                with open(log, "a") as f:
                    f.write(entry + "\n")


def read_together(url: str, name: str, arrived: str, readers: int) -> None:
    """Hold ``name``'s read side until ``readers`` processes have said they are in (proof that
    readers overlap: if they excluded each other, nobody would leave and the test times out)."""
    with tenure.connect(url) as client:
        rw = client.rwlock(name)
        with rw.read:
            Path(arrived, str(os.getpid())).write_text(str(rw.read.token))
            deadline = time.monotonic() + 60
            while len(os.listdir(arrived)) < readers:  # bounded: 60 s
                assert time.monotonic() < deadline, "readers did not overlap"
                time.sleep(0.005)


def hold_side_forever(url: str, name: str, kind: str, ready: str, ttl: float) -> None:
    """Acquire ``kind`` (``read``, ``write`` or ``permit``) of ``name``, write the token to
    ``ready``, then wait to be killed."""
    client = tenure.connect(url, ttl=ttl)
    lock: tenure.Lock
    if kind == "permit":
        lock = client.semaphore(name, limit=1)
    else:
        rw = client.rwlock(name)
        lock = rw.read if kind == "read" else rw.write
    lock.acquire()
    Path(ready).write_text(str(lock.token))
    time.sleep(600)


def use_permits(url: str, name: str, limit: int, log: str, times: int) -> None:
    """Take a permit ``times`` times, logging ``<enter ns> <exit ns> <token>`` for each tenure
    (the test checks that never more than ``limit`` tenures overlap)."""
    with tenure.connect(url) as client:
        sem = client.semaphore(name, limit=limit)
        for _ in range(times):
            with sem:
                entered = time.monotonic_ns()
                time.sleep(0.002)
                left = time.monotonic_ns()
                token = sem.token
            with open(log, "a") as f:
                f.write(f"{entered} {left} {token} {os.getpid()}\n")
