"""File-backend specifics, with real processes: FIFO across processes, one wake-up per grant (no
herd), and SIGKILL at several points (holder, waiters, inside the queue file's short lock, an
entry created but never locked) never leaves anything that blocks the next acquire. Run on the
disk (``tmp_path``) and on tmpfs (``/dev/shm``) where there is one."""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import random
import shutil
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tenure
from tenure._async.backends.file import _stem
from tenure._sync.backends import file as file_backend

SPAWN = multiprocessing.get_context("spawn")
FORK = multiprocessing.get_context("fork")  # the kill stress test starts many replacements
DEADLINE = 30.0


@pytest.fixture(params=["disk", "tmpfs"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "disk":
        yield f"file://{tmp_path / 'locks'}"
        return
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no tmpfs at /dev/shm")
    root = tempfile.mkdtemp(prefix="tenure-test-", dir="/dev/shm")
    try:
        yield f"file://{root}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


# Worker processes (spawned: they import this module).


def _contend(
    url: str, kind: str, name: str, log: str, index: int, hold: bool, patient: bool
) -> None:
    """Queue for ``name`` (lock, read, write or permit:N); once granted log ``index token
    wakeups``; then release at once, or (``hold``) keep it until killed. A ``patient`` waiter
    takes no timed second look (its back-off starts at the deadline): only an event wakes it,
    so the count of wake-ups is exact (a second look that happens to time out just as the
    lock is released would be granted with no wake-up counted)."""
    watch = file_backend._Watch
    if patient:
        file_backend._SECOND_LOOK = (DEADLINE, DEADLINE)
    with tenure.connect(url) as client:
        if kind == "lock":
            lock = client.lock(name)
        elif kind in ("read", "write"):
            lock = getattr(client.rwlock(name), kind)
        else:
            lock = client.semaphore(name, limit=int(kind.partition(":")[2]))
        before = watch.wakeups
        assert lock.acquire(timeout=DEADLINE)
        with open(log, "a") as f:
            f.write(f"{index} {lock.token} {watch.wakeups - before}\n")
        if hold:
            signal.pause()  # until the test kills us
        lock.release()


def _loop(url: str, kind: str, name: str, rounds: int, done: Any) -> None:
    """Acquire and release ``rounds`` times, counting in ``done`` (killed anywhere on the way)."""
    with tenure.connect(url) as client:
        for _ in range(rounds):
            if kind == "lock":
                lock = client.lock(name)
            elif kind == "permit":
                lock = client.semaphore(name, limit=2)
            else:  # rwlock: a writer one round in three
                lock = getattr(client.rwlock(name), "write" if done.value % 3 == 0 else "read")
            assert lock.acquire(timeout=DEADLINE)
            lock.release()
            done.value += 1


def _permits(url: str, slot: int, holding: Any, overlaps: Any) -> None:
    """Take a permit of a limit-2 semaphore over and over (until killed); while holding, count
    in ``overlaps[slot]`` each time another slot holds too (the later of two overlapping holders
    always sees the other's flag)."""
    rng = random.Random(slot)
    with tenure.connect(url) as client:
        permit = client.semaphore("stress", limit=2)
        for _ in range(100_000):
            assert permit.acquire(timeout=DEADLINE)
            holding[slot] = 1
            if any(holding[i] for i in range(len(holding)) if i != slot):
                overlaps[slot] += 1
            time.sleep(rng.uniform(0.0005, 0.003))
            holding[slot] = 0
            permit.release()


def _hold_queue_lock(lock_path: str, marker: str) -> None:
    """Die (when killed) inside the queue file's critical section."""
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
    Path(marker).touch()
    signal.pause()


# Helpers.


class Procs:
    def __init__(self, url: str, log: Path) -> None:
        self.url, self.log = url, log
        self.started: list[multiprocessing.process.BaseProcess] = []

    def start(
        self, kind: str, name: str, index: int, hold: bool = False, patient: bool = False
    ) -> int:
        proc = SPAWN.Process(
            target=_contend, args=(self.url, kind, name, str(self.log), index, hold, patient)
        )
        proc.start()
        self.started.append(proc)
        assert proc.pid is not None
        return proc.pid

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        for proc in self.started:
            if proc.pid == pid:
                proc.join(DEADLINE)
                assert proc.exitcode == -signal.SIGKILL

    def join(self) -> None:
        for proc in self.started:
            proc.join(DEADLINE)
        for proc in self.started:
            assert proc.exitcode in (0, -signal.SIGKILL), f"worker ended with {proc.exitcode}"

    def stop(self) -> None:
        for proc in self.started:
            if proc.is_alive():
                proc.kill()
                proc.join(10)

    def logged(self) -> list[tuple[int, int, int]]:
        if not self.log.exists():
            return []
        rows = [line.split() for line in self.log.read_text().splitlines()]
        return [(int(a), int(b), int(c)) for a, b, c in rows]


@pytest.fixture
def procs(url: str, tmp_path: Path) -> Iterator[Procs]:
    made = Procs(url, tmp_path / "log")
    try:
        yield made
    finally:
        made.stop()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    delay = 0.001
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def queued(client: tenure.Client, key: str, n: int, waiting: int | None = None) -> None:
    """Wait until ``key`` (``kind/name``) has ``n`` live contenders (``waiting`` of them queued)."""
    kind, _, name = key.partition("/")

    def reached() -> bool:
        found = client._driver.contenders(key)  # type: ignore[attr-defined]
        return len(found) == n and (waiting is None or sum(h.waiting for h in found) == waiting)

    wait_until(reached, f"{n} contenders of {kind} {name!r}")


def watched(inode: int) -> bool:
    """Whether one of this process's inotify instances watches ``inode``."""
    for fd in os.listdir("/proc/self/fdinfo"):
        with contextlib.suppress(OSError):
            if f" ino:{inode:x} " in Path(f"/proc/self/fdinfo/{fd}").read_text():
                return True
    return False


def queue_dir(url: str, kind: str, name: str) -> Path:
    return Path(url.removeprefix("file://")) / "tenure" / kind / f"{_stem(name)}.queue"


# FIFO and waking.


def test_waiting_processes_are_granted_in_arrival_order_one_wakeup_each(
    url: str, procs: Procs
) -> None:
    with tenure.connect(url) as client:
        holder = client.lock("fifo")
        assert holder.acquire()
        first_token = holder.token
        for i in range(5):
            procs.start("lock", "fifo", i, patient=True)
            queued(client, "lock/fifo", i + 2)
        holder.release()
        procs.join()
        log = procs.logged()
        assert [i for i, _, _ in log] == [0, 1, 2, 3, 4]
        tokens = [t for _, t, _ in log]
        assert tokens == sorted(tokens)
        assert tokens[0] > first_token
        # Each waiter watched only its predecessor: one release, one wake-up (no herd).
        assert [w for _, _, w in log] == [1] * 5


def test_a_release_wakes_exactly_the_run_of_readers(url: str, procs: Procs) -> None:
    with tenure.connect(url) as client:
        writer = client.rwlock("books").write
        assert writer.acquire()
        for i in range(3):
            procs.start("read", "books", i, hold=True, patient=True)
            queued(client, "rwlock/books", i + 2)
        procs.start("write", "books", 3)  # behind the readers: not woken by our release
        queued(client, "rwlock/books", 5)
        writer.release()
        queued(client, "rwlock/books", 4, waiting=1)  # three readers in, the writer waits
        wait_until(lambda: len(procs.logged()) == 3, "the readers to log their grants")
        rows = procs.logged()
        assert sorted(i for i, _, _ in rows) == [0, 1, 2]
        assert [w for _, _, w in rows] == [1, 1, 1]
        for pid in [p.pid for p in procs.started[:3]]:
            assert pid is not None
            procs.kill(pid)  # killed readers free the read side at once
        procs.join()
        assert procs.logged()[-1][0] == 3


def test_semaphore_waiters_move_up_without_a_herd(url: str, procs: Procs) -> None:
    with tenure.connect(url) as a, tenure.connect(url) as b:
        first, second = a.semaphore("gpu", limit=2), b.semaphore("gpu", limit=2)
        assert first.acquire()
        assert second.acquire()
        for i in range(4):
            procs.start("permit:2", "gpu", i, patient=True)
            queued(a, "semaphore/gpu", i + 3)
        first.release()
        procs.join()
        log = procs.logged()
        assert [i for i, _, _ in log] == [0, 1, 2, 3]
        # The first waiter wakes once (a holder left); a later one at most twice (its
        # predecessor was granted, then a holder left). A herd would wake all on each release.
        assert log[0][2] == 1
        assert all(w <= 2 for _, _, w in log), log
        second.release()


# Crashes (SIGKILL) at several points.


def test_killed_holder_hands_over_in_order(url: str, procs: Procs) -> None:
    with tenure.connect(url) as client:
        pid = procs.start("lock", "crash", 0, hold=True)
        queued(client, "lock/crash", 1, waiting=0)
        for i in (1, 2):
            procs.start("lock", "crash", i)
            queued(client, "lock/crash", i + 1)
        procs.kill(pid)
        procs.join()
        log = procs.logged()
        assert [i for i, _, _ in log] == [0, 1, 2]
        assert [t for _, t, _ in log] == sorted(t for _, t, _ in log)  # tokens survive it
        assert client.lock("crash").acquire(blocking=False)


def test_killed_waiters_are_skipped(url: str, procs: Procs) -> None:
    with tenure.connect(url) as client:
        holder = client.lock("skip")
        assert holder.acquire()
        pids = []
        for i in range(4):
            pids.append(procs.start("lock", "skip", i))
            queued(client, "lock/skip", i + 2)
        procs.kill(pids[1])  # in the middle of the queue
        procs.kill(pids[3])  # at its tail
        queued(client, "lock/skip", 3)
        holder.release()
        procs.join()
        assert [i for i, _, _ in procs.logged()] == [0, 2]
        later = client.lock("skip")
        assert later.acquire(blocking=False)
        later.release()
        assert not any(queue_dir(url, "lock", "skip").iterdir())  # dead entries were removed


def test_killed_first_permit_waiter_is_skipped(url: str, procs: Procs) -> None:
    with tenure.connect(url) as client:
        held = client.semaphore("pool", limit=1)
        assert held.acquire()
        first = procs.start("permit:1", "pool", 0)
        queued(client, "semaphore/pool", 2)
        procs.start("permit:1", "pool", 1)
        queued(client, "semaphore/pool", 3)
        procs.kill(first)
        held.release()
        procs.join()
        assert [i for i, _, _ in procs.logged()] == [1]
        # The key is empty again: a new limit is taken.
        other = client.semaphore("pool", limit=3)
        assert other.acquire(blocking=False)
        other.release()


def test_killed_reader_lets_the_waiting_writer_in(url: str, procs: Procs) -> None:
    with tenure.connect(url) as client:
        reader = procs.start("read", "shelf", 0, hold=True)
        queued(client, "rwlock/shelf", 1, waiting=0)
        writer = client.rwlock("shelf").write
        assert not writer.acquire(blocking=False)
        procs.start("write", "shelf", 1)
        queued(client, "rwlock/shelf", 2)
        procs.kill(reader)
        procs.join()
        assert [i for i, _, _ in procs.logged()] == [0, 1]
        assert writer.acquire(blocking=False)
        writer.release()


@pytest.mark.parametrize("queued", [False, True], ids=["fast", "entry"])
@pytest.mark.parametrize("kind", ["lock", "read", "permit"])
def test_a_dead_holder_still_locked_when_its_close_is_seen_hands_over(
    url: str, kind: str, queued: bool
) -> None:
    """A dying process's entry (or a fast holder's hold file) is closed (``IN_CLOSE_WRITE``,
    which wakes its watcher) a moment *before* the kernel drops its lock: the woken waiter may
    still find it locked, and no other event follows. Here the lock is never dropped at all:
    the close alone must hand over."""

    def side(client: tenure.Client, holder: bool) -> tenure.Lock:
        if kind == "lock":
            return client.lock("dying")
        if kind == "read":
            return getattr(client.rwlock("dying"), "write" if holder else "read")
        return client.semaphore("dying", limit=1)

    with tenure.connect(url) as a, tenure.connect(url) as b, tenure.connect(url) as c:
        holder, waiter = side(a, True), side(b, False)
        if queued:  # granted from the queue: it has an entry (else the fast path has none)
            first = side(c, True)
            assert first.acquire()
            taking = threading.Thread(target=holder.acquire)
            taking.start()
            queued_for(c, kind, 2)
            first.release()
            taking.join(DEADLINE)
        else:
            assert holder.acquire()
        entry = holder._grant.data  # type: ignore[union-attr]
        assert isinstance(entry, file_backend._Entry if queued else file_backend._Fast)
        got: list[bool] = []
        thread = threading.Thread(target=lambda: got.append(waiter.acquire(timeout=10)))
        thread.start()
        try:
            wait_until(lambda: watched(os.fstat(entry.fd).st_ino), "the waiter to watch")
            os.close(os.open(entry.path, os.O_WRONLY))  # the close, without the unlock
        finally:
            thread.join(DEADLINE)
        assert got == [True]
        with pytest.raises(tenure.LockLostError):  # its entry is gone: it is not held
            holder.ensure_held()
        waiter.release()


def queued_for(client: tenure.Client, kind: str, n: int) -> None:
    key = {"lock": "lock", "read": "rwlock", "permit": "semaphore"}[kind] + "/dying"
    queued(client, key, n)


def _kill_permit_holders(url: str, kills: int, workers: int = 5) -> None:
    """SIGKILL ``kills`` permit holders (some SIGSTOPped first, some waiters too) of a limit-2
    semaphore at random moments; after each death two survivors must hold at once again."""
    holding = FORK.Array("b", workers, lock=False)
    overlaps = FORK.Array("q", workers, lock=False)
    procs: list[multiprocessing.process.BaseProcess] = [None] * workers  # type: ignore[list-item]

    def start(slot: int) -> None:
        holding[slot] = 0
        procs[slot] = FORK.Process(target=_permits, args=(url, slot, holding, overlaps))
        procs[slot].start()

    rng = random.Random(kills)
    try:
        for slot in range(workers):
            start(slot)
        for n in range(kills):
            if n % 4 == 3:  # a waiter (or whoever), wherever it is
                victim = rng.randrange(workers)
            else:
                wait_until(lambda: any(holding), "a holder")
                victim = rng.choice([i for i in range(workers) if holding[i]] or [0])
            pid = procs[victim].pid
            assert pid is not None
            if n % 2:
                os.kill(pid, signal.SIGSTOP)  # as the fault suite does: a stable victim
            os.kill(pid, signal.SIGKILL)
            procs[victim].join(DEADLINE)
            holding[victim] = 0
            seen = sum(overlaps)
            deadline = time.monotonic() + 10
            delay = 0.001
            while sum(overlaps) == seen:
                assert time.monotonic() < deadline, (
                    f"kill {n}: no two permits held at once within 10 s after the death"
                )
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            start(victim)
    finally:
        for proc in procs:
            if proc is not None and proc.is_alive():
                proc.kill()
                proc.join(10)


def test_killed_permit_holders_are_replaced_at_once(url: str) -> None:
    _kill_permit_holders(url, 30)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("TENURE_STRESS") != "1", reason="the stress tier: TENURE_STRESS=1 (1,000 kills)"
)
def test_killed_permit_holders_are_replaced_at_once_long(url: str) -> None:
    _kill_permit_holders(url, 1000)


@pytest.mark.parametrize("kind", ["lock", "permit", "rwlock"])
def test_kills_at_random_points_never_block_the_survivors(url: str, kind: str) -> None:
    workers, rounds = 6, 150
    done = [SPAWN.Value("i", 0, lock=False) for _ in range(workers)]
    # The even ones run until killed (their bound is only a safety net), the odd ones `rounds`.
    bounds = [rounds * 1000 if i % 2 == 0 else rounds for i in range(workers)]
    started = [
        SPAWN.Process(target=_loop, args=(url, kind, "stress", bounds[i], done[i]))
        for i in range(workers)
    ]
    for proc in started:
        proc.start()
    try:
        # Kill half of them at different moments of their loops: queueing, waiting, holding,
        # releasing, wherever each happens to be.
        for i, after in zip(range(0, workers, 2), (5, 40, 90), strict=True):
            wait_until(lambda i=i, after=after: done[i].value >= after, f"worker {i} to run")
            os.kill(started[i].pid or 0, signal.SIGKILL)
        for proc in started:
            proc.join(DEADLINE * 2)
        assert [p.exitcode for p in started] == [-signal.SIGKILL, 0] * (workers // 2)
        assert [done[i].value for i in range(1, workers, 2)] == [rounds] * (workers // 2)
    finally:
        for proc in started:
            if proc.is_alive():
                proc.kill()
                proc.join(10)
    key_kind = "semaphore" if kind == "permit" else kind
    with tenure.connect(url) as client:
        lock = (
            client.lock("stress")
            if kind == "lock"
            else client.semaphore("stress", limit=2)
            if kind == "permit"
            else client.rwlock("stress").write
        )
        assert lock.acquire(blocking=False)
        # The dead entries were removed, so ours is the fast grant: nothing is queued.
        assert isinstance(lock._grant.data, file_backend._Fast)  # type: ignore[union-attr]
        assert list(queue_dir(url, key_kind, "stress").iterdir()) == []
        lock.release()


def test_death_inside_the_queue_lock_blocks_nobody(url: str, tmp_path: Path) -> None:
    lock_path = Path(url.removeprefix("file://")) / "tenure" / "lock" / "mid.lock"
    marker = tmp_path / "in"
    proc = SPAWN.Process(target=_hold_queue_lock, args=(str(lock_path), str(marker)))
    proc.start()
    try:
        wait_until(marker.exists, "the child to take the queue lock")
        os.kill(proc.pid or 0, signal.SIGKILL)
        proc.join(DEADLINE)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
    with tenure.connect(url) as client:
        lock = client.lock("mid")
        assert lock.acquire(timeout=DEADLINE)
        lock.release()


def test_a_process_blocked_on_the_queue_lock_is_not_overtaken(url: str, procs: Procs) -> None:
    """The kernel wakes a process blocked on the queue file's short lock but does not hand it
    the lock: a client that just left a fast grant and finds the lock free must let it go
    first (else, releasing and acquiring in a loop, it takes the fast grant back, again and
    again)."""
    client = tenure.connect(url)
    again = client.lock("q")
    assert again.acquire(blocking=False)
    assert isinstance(again._grant.data, file_backend._Fast)  # type: ignore[union-attr]
    again.release()
    lock_path = Path(url.removeprefix("file://")) / "tenure" / "lock" / f"{_stem('q')}.lock"
    fd = os.open(lock_path, os.O_RDWR)
    pid, resume = 0, None

    def cont() -> None:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    try:
        # Hold the short lock (the first byte), as a contender inside it would.
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 1, 0))
        pid = procs.start("lock", "q", 0, hold=True)
        probe = struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 1, 1, 0)  # its announcement, byte 1

        def announced() -> bool:
            found = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe)
            return bool(struct.unpack("hhqqi4x", found)[0] != fcntl.F_UNLCK)

        wait_until(announced, "the process to wait for the queue lock")
        # Stopped, it cannot take the lock when woken: only the announcement can hold us back.
        os.kill(pid, signal.SIGSTOP)
        resume = threading.Timer(0.2, cont)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_UNLCK, 0, 0, 1, 0))
        resume.start()
        assert not again.acquire(blocking=False)  # it went first: it holds
        wait_until(lambda: len(procs.logged()) == 1, "the waiting process to log its grant")
    finally:
        if resume is not None:
            resume.cancel()
        cont()
        os.close(fd)
        client.close()


def test_a_fast_holder_that_released_lets_waiters_in_before_it_closes(url: str) -> None:
    """A fast holder marks its slot released before it closes its hold file: a waiter that
    looks between the close's event and the kernel's unlock sees the file still locked, and
    must be let in by the mark (it would wait for an event that has passed)."""
    with tenure.connect(url) as a, tenure.connect(url) as b:
        holder = a.lock("mark")
        assert holder.acquire(blocking=False)
        fast = holder._grant.data  # type: ignore[union-attr]
        assert isinstance(fast, file_backend._Fast)
        # The state between the mark and the close: marked, the hold file still locked.
        os.pwrite(fast.queue.fd, b"r", file_backend._RELEASED_AT)
        waiter = b.lock("mark")
        assert waiter.acquire(timeout=DEADLINE)
        assert b.holder("mark") is not None
        assert b.holder("mark").token == waiter.token  # type: ignore[union-attr]
        waiter.release()
        holder.release()


def test_an_entry_created_but_never_locked_is_dead(url: str) -> None:
    with tenure.connect(url) as client:
        lock = client.lock("orphan")
        assert lock.acquire()
        first = lock.token
        lock.release()
        # What a process killed between creating its entry and locking it leaves behind.
        entries = queue_dir(url, "lock", "orphan")
        stale = entries / f"{first + 1:020d}-x-{'0' * 32}"
        stale.write_bytes(b"0" * 20 + b"\n{}")
        assert client.contenders("orphan") == []
        bumped = Path(str(entries).removesuffix(".queue") + ".lock")
        bumped.write_bytes(struct.pack("<QQ", first + 1, 0))
        assert lock.acquire(blocking=False)
        assert lock.token == first + 2
        assert not stale.exists()
        lock.release()


# Inspection, loss, and the documented exception.


def test_contenders_in_grant_order_with_modes(url: str, procs: Procs) -> None:
    with tenure.connect(url) as client:
        reader = client.rwlock("desk").read
        assert reader.acquire()
        procs.start("write", "desk", 0)
        queued(client, "rwlock/desk", 2)
        procs.start("read", "desk", 1)
        queued(client, "rwlock/desk", 3)
        found = client.rwlock("desk").contenders()
        assert [(h.mode, h.waiting) for h in found] == [
            ("shared", False),
            ("exclusive", True),
            ("shared", True),
        ]
        assert found[0].token == reader.token
        assert [h.token for h in found[1:]] == [0, 0]
        assert len({h.pid for h in found}) == 3
        reader.release()
        procs.join()
        assert [i for i, _, _ in procs.logged()] == [0, 1]


def _queued_behind(url: str, name: str, holder: tenure.Lock, waiter: tenure.Lock) -> int:
    """``waiter`` queues (an entry) behind ``holder``, is granted when it releases, releases in
    turn; returns its entry's inode."""
    assert holder.acquire(timeout=DEADLINE)
    inode: list[int] = []

    def wait() -> None:
        assert waiter.acquire(timeout=DEADLINE)
        entry = waiter._grant.data  # type: ignore[union-attr]
        assert isinstance(entry, file_backend._Entry)
        inode.append(os.fstat(entry.fd).st_ino)
        waiter.release()

    thread = threading.Thread(target=wait)
    thread.start()
    with tenure.connect(url) as observer:
        queued(observer, f"lock/{name}", 2, waiting=1)
    holder.release()
    thread.join(DEADLINE)
    assert len(inode) == 1
    return inode[0]


def test_a_released_entry_is_kept_marked_and_reused(url: str) -> None:
    """Creating an entry file costs an inode (hundreds of µs on a busy ext4), renaming one a
    directory change: a released entry is marked left where it is, still locked (its watchers
    wake on the mark), counted by nobody, and becomes one of the same client's next entries:
    two alternate, so the one left last keeps its content (its grant time) for the waiter
    behind it. Closing the client deletes them."""

    def spares() -> set[int]:
        found = [p.stat() for p in queue_dir(url, "lock", "reuse").iterdir()]
        return {st.st_ino for st in found if st.st_mode & file_backend._LEFT_BIT}

    with tenure.connect(url) as a, tenure.connect(url) as b:
        holder, waiter = a.lock("reuse"), b.lock("reuse")
        first = _queued_behind(url, "reuse", holder, waiter)
        assert spares() == {first}
        assert b.contenders("reuse") == []  # left: not a contender
        second = _queued_behind(url, "reuse", holder, waiter)
        assert second != first  # (the one left last is not taken at once)
        assert spares() == {first, second}
        assert _queued_behind(url, "reuse", holder, waiter) == first
        assert _queued_behind(url, "reuse", holder, waiter) == second
    assert list(queue_dir(url, "lock", "reuse").iterdir()) == []


def _entry_holder(url: str, name: str, holder: tenure.Lock) -> None:
    """``holder`` holds ``name`` through an entry in the queue (not the fast grant): it
    queues behind a fast holder, which then releases."""
    with tenure.connect(url) as first:
        fast = first.lock(name)
        assert fast.acquire(timeout=DEADLINE)
        thread = threading.Thread(target=lambda: holder.acquire(timeout=DEADLINE))
        thread.start()
        queued(first, f"lock/{name}", 2, waiting=1)
        fast.release()
        thread.join(DEADLINE)
    assert holder.held
    assert isinstance(holder._grant.data, file_backend._Entry)  # type: ignore[union-attr]


@pytest.mark.parametrize("held_by", ["entry", "fast"])
def test_a_lock_that_went_without_an_event_is_noticed(url: str, held_by: str) -> None:
    """The kernel sends a dying owner's IN_CLOSE_WRITE just before it drops the owner's lock,
    and a waiter whose watch was set between the two (a loaded machine, a descheduled vCPU)
    sees the file locked and gets no event for the unlock. Simulated: the holder's lock is
    dropped without closing its file (no event at all). The waiter must notice all the same,
    by looking again after a quiet while."""
    with tenure.connect(url) as a, tenure.connect(url) as b:
        holder, waiter = a.lock("quiet"), b.lock("quiet")
        if held_by == "entry":
            _entry_holder(url, "quiet", holder)
        else:
            assert holder.acquire()
            assert isinstance(holder._grant.data, file_backend._Fast)  # type: ignore[union-attr]
        results: list[bool] = []
        thread = threading.Thread(target=lambda: results.append(waiter.acquire(timeout=DEADLINE)))
        thread.start()
        queued(a, "lock/quiet", 2, waiting=1)
        time.sleep(0.2)  # waiting on its watch
        unlock = struct.pack(file_backend._FLOCK, fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0)
        fcntl.fcntl(holder._grant.data.fd, file_backend._SETLK, unlock)  # type: ignore[union-attr]
        thread.join(5.0)  # (it looks again within ~2 s; without looking again: its deadline)
        assert results == [True], "the waiter did not notice the holder's lock was gone"
        thread.join(DEADLINE)
        waiter.release()
        with contextlib.suppress(tenure.LockLostError):
            holder.release()


def test_a_waiter_whose_predecessor_timed_out_still_waits_for_the_holder(url: str) -> None:
    """A waiter woken by its predecessor's leaving goes without listing the queue only if that
    predecessor had been granted; one that timed out leaves the holder ahead of it."""
    with tenure.connect(url) as a, tenure.connect(url) as b, tenure.connect(url) as c:
        holder, impatient, patient = a.lock("chain"), b.lock("chain"), c.lock("chain")
        _entry_holder(url, "chain", holder)
        results: dict[str, bool] = {}

        def take(lock: tenure.Lock, key: str, timeout: float) -> None:
            results[key] = lock.acquire(timeout=timeout)

        first = threading.Thread(target=take, args=(impatient, "impatient", 1.0))
        first.start()
        queued(a, "lock/chain", 2, waiting=1)
        second = threading.Thread(target=take, args=(patient, "patient", DEADLINE))
        second.start()
        queued(a, "lock/chain", 3, waiting=2)
        first.join(DEADLINE)
        assert results == {"impatient": False}
        time.sleep(0.3)  # time enough for a wrongly woken waiter to take it
        assert "patient" not in results
        assert [h.waiting for h in a.contenders("chain")] == [False, True]
        holder.release()
        second.join(DEADLINE)
        assert results["patient"] is True
        patient.release()


def test_a_waiter_behind_an_entry_holder_honours_its_min_hold(url: str) -> None:
    """The holder ahead was granted and left, but left a kept entry in its place (min_hold):
    the waiter behind it must see the kept entry, not go at once."""
    with tenure.connect(url) as a, tenure.connect(url) as b:
        holder, waiter = a.lock("kept-chain", min_hold=1.0), b.lock("kept-chain")
        _entry_holder(url, "kept-chain", holder)
        got: list[float] = []
        thread = threading.Thread(
            target=lambda: (
                got.append(time.monotonic()) if waiter.acquire(timeout=DEADLINE) else None
            )
        )
        thread.start()
        queued(a, "lock/kept-chain", 2, waiting=1)
        released = time.monotonic()
        holder.release()  # well before the min_hold is over
        thread.join(DEADLINE)
        assert got
        assert got[0] - released >= 0.5, "granted before the kept entry's hold ended"
        waiter.release()


def _keep_a_spare(url: str, marker: str) -> None:
    with tenure.connect(url) as a, tenure.connect(url) as b:
        _queued_behind(url, "swept", a.lock("swept"), b.lock("swept"))
        Path(marker).touch()
        signal.pause()


def test_a_dead_processs_spare_is_swept(url: str, tmp_path: Path) -> None:
    marker = tmp_path / "spare"
    proc = SPAWN.Process(target=_keep_a_spare, args=(url, str(marker)))
    proc.start()
    try:
        wait_until(marker.exists, "the child to keep a spare")
        found = [p.stat() for p in queue_dir(url, "lock", "swept").iterdir()]
        assert len([st for st in found if st.st_mode & file_backend._LEFT_BIT]) == 1
        os.kill(proc.pid or 0, signal.SIGKILL)
        proc.join(DEADLINE)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
    with tenure.connect(url) as client:  # its first use of the key sweeps
        assert client.lock("swept").acquire(blocking=False)
        assert list(queue_dir(url, "lock", "swept").iterdir()) == []


def test_threads_sharing_a_client_get_distinct_tokens(url: str) -> None:
    """A client's sessions share its open queue file, whose OFD lock does not exclude threads:
    they must not number (or judge dead) each other's half-made entries."""
    tokens: list[int] = []
    errors: list[BaseException] = []
    with tenure.connect(url) as client:

        def run() -> None:
            try:
                permit = client.session().semaphore("threads", limit=8)
                for _ in range(100):
                    assert permit.acquire(timeout=DEADLINE)
                    tokens.append(permit.token)
                    permit.release()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
    assert errors == []
    assert len(tokens) == len(set(tokens)) == 400


@pytest.mark.parametrize("deleted", ["entry", "hold file", "queue file"])
def test_deleting_the_holders_files_makes_it_lost(url: str, deleted: str) -> None:
    with tenure.connect(url) as a, tenure.connect(url) as b, tenure.connect(url) as c:
        lock = a.lock("taken")
        if deleted == "entry":  # granted from the queue, behind another holder
            first = c.lock("taken")
            assert first.acquire()
            taking = threading.Thread(target=lock.acquire)
            taking.start()
            queued(c, "lock/taken", 2)
            first.release()
            taking.join(DEADLINE)
            assert lock.locked()
        else:
            assert lock.acquire()  # the fast grant: a hold file, no entry
        token = lock.token
        data = lock._grant.data  # type: ignore[union-attr]
        os.unlink(data.queue.lock_path if deleted == "queue file" else data.path)
        with pytest.raises(tenure.LockLostError):
            lock.ensure_held()
        other = b.lock("taken")
        assert other.acquire(blocking=False)
        assert other.token > token
        other.release()


def test_waiting_without_inotify_backs_off(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_backend._Watch, "_libc", False)
    monkeypatch.setattr(file_backend, "_IDLE_INOTIFY", [])
    with tenure.connect(url) as a, tenure.connect(url) as b:
        holder = a.lock("plain")
        assert holder.acquire()
        waiter = b.lock("plain")
        assert not waiter.acquire(timeout=0.1)
        holder.release()
        assert waiter.acquire(timeout=DEADLINE)
        waiter.release()


def test_inotify_instances_are_reused(url: str) -> None:
    idle = len(file_backend._IDLE_INOTIFY)  # other tests' waits in this process left some
    with tenure.connect(url) as a, tenure.connect(url) as b:
        holder = a.lock("reuse")
        for _ in range(20):
            assert holder.acquire()
            assert not b.lock("reuse").acquire(timeout=0.01)
            holder.release()
    assert len(file_backend._IDLE_INOTIFY) == max(idle, 1)


def test_a_reused_entry_is_written_over_its_whole_length(url: str) -> None:
    """A released entry becomes the same client's next entry but one, its record written over
    the file's whole length (blanks after a shorter one): the longest record it ever held, a
    proclaimed one included, never shows through a later, shorter one."""
    values = ("a-much-longer-value-" * 8, "b" * 120, "short", "s")
    with tenure.connect(url) as a, tenure.connect(url) as b:
        for value in values:
            holder = a.election("svc", value="holder")
            assert holder.campaign(timeout=DEADLINE)
            waiter = b.election("svc", value=value)
            won: list[bool] = []
            thread = threading.Thread(target=lambda w=waiter, r=won: r.append(w.campaign(DEADLINE)))
            thread.start()
            queued(a, "election/svc", 2, waiting=1)
            holder.resign()
            thread.join(DEADLINE)
            assert won == [True]
            assert isinstance(waiter._lock._grant.data, file_backend._Entry)  # type: ignore[union-attr]
            leader = a.election("svc").leader()
            assert leader is not None
            assert leader.value == value
            waiter.proclaim(value + "-and-then-some-more")  # longer than the entry was
            leader = a.election("svc").leader()
            assert leader is not None
            assert leader.value == value + "-and-then-some-more"
            waiter.resign()


def test_a_waiters_watch_leaves_no_event_behind(tmp_path: Path) -> None:
    """A waiter's watch (one-shot) that fired, read or not, leaves nothing queued in the inotify
    instance it hands back, so the next waiter to borrow it is not woken by a stale event."""
    target = tmp_path / "entry"
    target.write_bytes(b"")

    def pending(fd: int) -> bool:
        try:
            return bool(os.read(fd, 65536))
        except BlockingIOError:
            return False

    watch_ = file_backend._Watch([(str(target), file_backend._LEFT)], oneshot=True)
    fd = watch_.fd
    assert fd >= 0
    target.chmod(0o744)  # fires; nobody reads it before the close
    watch_.close()
    assert not pending(fd)
    watch_ = file_backend._Watch([(str(target), file_backend._LEFT)], oneshot=True)
    fd = watch_.fd
    target.chmod(0o644)
    assert watch_.wait(DEADLINE)  # woken, and the watch is spent
    assert watch_.gone
    watch_.close()
    assert not pending(fd)
    watch_ = file_backend._Watch([(str(target), file_backend._LEFT)], oneshot=True)
    fd = watch_.fd
    watch_.close()  # never fired: removed
    assert not pending(fd)


def test_a_shorter_value_replaces_a_longer_one(url: str) -> None:
    with tenure.connect(url) as client:
        election = client.election("svc", value="a-rather-long-value")
        assert election.campaign()
        election.proclaim("x")
        leader = client.election("svc").leader()
        assert leader is not None
        assert leader.value == "x"
        election.resign()


def test_tokens_continue_from_the_previous_layout(url: str) -> None:
    """The layout before the queue kept the last token in ``<stem>.json``."""
    kind_dir = Path(url.removeprefix("file://")) / "tenure" / "lock"
    kind_dir.mkdir(parents=True)
    (kind_dir / "old.lock").touch()
    (kind_dir / "old.json").write_text('{"owner": "x", "token": 41}')
    with tenure.connect(url) as client:
        lock = client.lock("old")
        assert lock.acquire(blocking=False)
        assert lock.token == 42
        lock.release()


def test_network_file_systems_are_refused(tmp_path: Path) -> None:
    from tenure._async.backends.file import network_filesystem

    mounts = (
        "/dev/sda1 / ext4 rw 0 0\n"
        "srv:/export /mnt/shared nfs4 rw 0 0\n"
        "tmpfs /mnt/shared/local tmpfs rw 0 0\n"
        "//nas/x /mnt/my\\040nas cifs rw 0 0\n"
    )
    assert network_filesystem("/mnt/shared/locks", mounts) == "nfs4"
    assert network_filesystem("/mnt/shared", mounts) == "nfs4"
    assert network_filesystem("/mnt/shared/local/locks", mounts) is None  # the longest mount
    assert network_filesystem("/mnt/sharedx", mounts) is None
    assert network_filesystem("/mnt/my nas/l", mounts) == "cifs"
    assert network_filesystem("/home/me", mounts) is None
    assert network_filesystem(str(tmp_path)) is None  # this machine's test directory is local
