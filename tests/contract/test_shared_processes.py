"""Contract tests of the shared modes with several processes: readers overlap, writers exclude
everyone, a semaphore never lets more than ``limit`` in, dead holders' grants come back."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import tenure

from . import workers
from .backends import Backend
from .runners import Runner

SPAWN = multiprocessing.get_context("spawn")


def _run_all(procs: list[multiprocessing.process.BaseProcess], timeout: float = 120) -> None:
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(timeout)
            assert proc.exitcode == 0, f"worker {proc.pid} ended with {proc.exitcode}"
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(10)


def test_readers_overlap_in_time(backend: Backend, tmp_path: Path) -> None:
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    readers = 4
    _run_all(
        [
            SPAWN.Process(
                target=workers.read_together, args=(backend.url, "together", str(arrived), readers)
            )
            for _ in range(readers)
        ]
    )
    assert len(os.listdir(arrived)) == readers


def test_mixed_readers_and_writers_count_exactly(backend: Backend, tmp_path: Path) -> None:
    counter, log = tmp_path / "counter", tmp_path / "log"
    counter.write_text("0")
    writers, readers, times = 3, 3, 60
    _run_all(
        [
            SPAWN.Process(
                target=workers.read_and_write,
                args=(backend.url, str(counter), str(log), times, i < writers),
            )
            for i in range(writers + readers)
        ]
    )
    assert int(counter.read_text()) == writers * times
    entries = [line.split() for line in log.read_text().splitlines()]
    assert len(entries) == (writers + readers) * times
    assert not [e for e in entries if e[-1] == "changed"], "a reader saw a write inside"
    # Log order is grant order for writers (they exclude everyone, and log while holding).
    write_tokens = [int(e[1]) for e in entries if e[0] == "w"]
    assert all(a < b for a, b in itertools.pairwise(write_tokens)), "writer tokens not increasing"
    tokens = [int(e[1]) for e in entries]
    assert len(set(tokens)) == len(tokens), "a token was granted twice"


def test_semaphore_never_lets_more_than_limit_in(backend: Backend, tmp_path: Path) -> None:
    log = tmp_path / "log"
    procs, limit, times = 6, 3, 25
    _run_all(
        [
            SPAWN.Process(
                target=workers.use_permits, args=(backend.url, "gpu", limit, str(log), times)
            )
            for _ in range(procs)
        ]
    )
    rows = [line.split() for line in log.read_text().splitlines()]
    assert len(rows) == procs * times
    assert len({r[3] for r in rows}) == procs, "a process never got a permit"
    events = sorted(
        [(int(r[0]), 1) for r in rows] + [(int(r[1]), -1) for r in rows],
        key=lambda e: (e[0], e[1]),  # at a tie, a leave counts before an enter
    )
    inside = peak = 0
    for _, step in events:
        inside += step
        peak = max(peak, inside)
    assert peak <= limit, f"{peak} holders at once with limit {limit}"
    tokens = [int(r[2]) for r in rows]
    assert len(set(tokens)) == len(tokens), "a token was granted twice"


@pytest.mark.parametrize("kind", ["read", "write", "permit"])
def test_killed_holder_of_a_shared_mode_lets_others_in(
    backend: Backend, tmp_path: Path, kind: str
) -> None:
    ready = tmp_path / "ready"
    ttl = 2.0
    proc = SPAWN.Process(
        target=workers.hold_side_forever, args=(backend.url, "victim", kind, str(ready), ttl)
    )
    proc.start()
    try:
        Runner.wait_for(lambda: ready.exists() and ready.read_text() != "", 60)
        dead_token = int(ready.read_text())
        with tenure.connect(backend.url) as client:
            lock: tenure.Lock
            if kind == "permit":
                lock = client.semaphore("victim", limit=1)
            else:
                lock = client.rwlock("victim").write  # excluded by a reader and a writer
            assert not lock.acquire(blocking=False)
            os.kill(proc.pid, signal.SIGKILL)
            slack = backend.capabilities.expiry_slack
            wait = 10.0 if not backend.capabilities.leases else ttl + slack + 10.0
            started = time.monotonic()
            assert lock.acquire(timeout=wait)
            print(f"takeover after SIGKILL ({kind}): {time.monotonic() - started:.3f} s")
            assert lock.token > dead_token
            lock.release()
    finally:
        proc.kill()
        proc.join(10)


def test_threads_of_one_client_share_permits_and_readers_safely(backend: Backend) -> None:
    """Threads of one process, one client, each with its own objects: never more than ``limit``
    permits, no reader beside a writer, and every token of a name granted once."""
    guard = threading.Lock()
    inside = {"permits": 0, "readers": 0, "writers": 0}
    violations: list[str] = []
    tokens: dict[str, list[int]] = {"semaphore": [], "rwlock": []}

    def enter(kind: str) -> None:
        with guard:
            inside[kind] += 1
            if inside["permits"] > 2:
                violations.append(f"{inside['permits']} permits")
            if inside["writers"] > 1 or (inside["writers"] and inside["readers"]):
                violations.append(f"{inside['writers']} writers, {inside['readers']} readers")

    def leave(kind: str, space: str, token: int) -> None:
        with guard:
            inside[kind] -= 1
            tokens[space].append(token)

    with tenure.connect(backend.url) as client:

        def work(i: int) -> None:
            sem = client.semaphore("threads-sem", limit=2)
            rw = client.rwlock("threads-rw")
            side, kind = (rw.write, "writers") if i % 2 else (rw.read, "readers")
            for _ in range(25):
                with sem:
                    enter("permits")
                    time.sleep(0)
                    leave("permits", "semaphore", sem.token)
                with side:
                    enter(kind)
                    time.sleep(0)
                    leave(kind, "rwlock", side.token)

        runner = Runner()
        for i in range(4):
            runner.start(lambda i=i: work(i))
        runner.join(120)
    assert violations == []
    for space, granted in tokens.items():
        assert len(granted) == 100, space
        assert len(set(granted)) == 100, f"a {space} token was granted twice"
