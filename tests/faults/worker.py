"""The client process of a fault run (importable by the ``spawn`` start method).

Jepsen-style lock-set workload, per iteration: acquire the lock; record ``enter`` (token,
session); read the set from both stores (fenced and unfenced, with the token); pause a small
random time; write back each set plus one unique element (with the token); record ``exit``;
release. The client is deliberately naive: it does not look at ``lock.lost`` before writing, so a
paused ex-holder that resumes writes with its old token, and only the fence can refuse it.

The other primitives (:attr:`WorkerConfig.primitive`):

* ``rwlock``: each iteration is a writer's (``rw.write``: the lock-set iteration above, with the
  write token) or a reader's (``rw.read``, chance ``1 - write_ratio``): read both stores with the
  read token (:meth:`~tests.faults.resource.Store.shared_read`), pause, read them again. The
  pause-holder fault stops either between its two operations, so a paused reader's second read
  comes after a newer writer's write: stale, and refused by the fence.
* ``semaphore``: take a permit of ``client.semaphore(name, limit=limit)``, check in to the
  :class:`~tests.faults.resource.Pool` with the token, pause, check out.

Each client keeps one explicit session at a time (``client.session(ttl)``); when it is lost the
client opens a new one (numbered), so the checker can tell a grant in an expired session from a
grant in its successor. Progress is published in a shared-memory array (no locks: a SIGSTOPped or
SIGKILLed process must not be able to block the controller), see :class:`Slots`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import tenure
from tenure.errors import BackendError, LockLostError, NotHeldError, TenureError
from tests.faults.history import Event
from tests.faults.resource import Pool, Store

# Phases of a client, as published in shared memory.
STARTING, IDLE, ACQUIRING, ENTERED, READ, WRITING, WRITTEN, RELEASING, STOPPED = range(9)
PHASES = (
    "starting", "idle", "acquiring", "entered", "read", "writing", "written", "releasing", "stopped"
)  # fmt: skip
# Fields of a slot (MODE: the current tenure's, an index in MODES).
PHASE, TOKEN, PID, LOST, SESSION_LOST, GRANTS, WRITTEN_TOKEN, INCARNATION, SESSION, MODE = range(10)
NFIELDS = 10
MODES = ("exclusive", "shared", "permit")
STOP = 0  # index of the global stop flag


class SharedArray(Protocol):
    def __getitem__(self, i: int) -> int: ...
    def __setitem__(self, i: int, value: int) -> None: ...
    def __len__(self) -> int: ...


class Slots:
    """A view on the shared ``RawArray('q')``: a stop flag, then ``NFIELDS`` per client slot."""

    def __init__(self, array: SharedArray) -> None:
        self.array = array

    @property
    def count(self) -> int:
        return (len(self.array) - 1) // NFIELDS

    def get(self, slot: int, fld: int) -> int:
        return int(self.array[1 + slot * NFIELDS + fld])

    def set(self, slot: int, fld: int, value: int) -> None:
        self.array[1 + slot * NFIELDS + fld] = value

    def bump(self, slot: int, fld: int) -> None:
        self.set(slot, fld, self.get(slot, fld) + 1)

    @property
    def stopped(self) -> bool:
        return bool(self.array[STOP])

    def stop(self) -> None:
        self.array[STOP] = 1


@dataclass(frozen=True)
class WorkerConfig:
    url: str
    name: str
    ttl: float
    directory: str
    duration: float  # seconds; the worker stops after this even if nobody tells it
    max_ops: int
    pause_min: float = 0.001
    pause_max: float = 0.010
    acquire_timeout: float = 15.0
    seed: int = 0
    primitive: str = "lock"  # "lock" | "rwlock" | "semaphore"
    limit: int = 2  # a semaphore's
    write_ratio: float = 0.5  # an rwlock's share of writer iterations


class EventLog:
    """Append-only JSON lines, one file per client; safe from several threads."""

    def __init__(self, path: Path, client: str) -> None:
        self.client = client
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 (closed in close())
        self._lock = threading.Lock()

    def note(
        self, kind: str, token: int = 0, session: int = 0, detail: str = "", mode: str = ""
    ) -> None:
        event = Event(time.monotonic_ns(), self.client, kind, token, session, detail, mode)
        with self._lock:
            self._file.write(event.to_json() + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def client_id(slot: int, incarnation: int) -> str:
    return f"w{slot}.{incarnation}"


def events_path(directory: str | Path, client: str) -> Path:
    return Path(directory) / f"events-{client}.jsonl"


def run(config: WorkerConfig, slot: int, incarnation: int, array: SharedArray) -> None:
    """The worker's main function (``multiprocessing`` target)."""
    slots = Slots(array)
    me = client_id(slot, incarnation)
    logging.basicConfig(
        filename=str(Path(config.directory) / f"worker-{me}.log"),
        level=logging.INFO,
        format="%(asctime)s %(threadName)s %(levelname)s %(message)s",
    )
    log = EventLog(events_path(config.directory, me), me)
    slots.set(slot, PID, os.getpid())
    slots.set(slot, INCARNATION, incarnation)
    log.note("start", detail=str(os.getpid()))
    try:
        _loop(config, slot, incarnation, slots, log)
    finally:
        slots.set(slot, PHASE, STOPPED)
        log.note("stop")
        log.close()


def _connect(config: WorkerConfig, slots: Slots, deadline: float) -> tenure.Client:
    for _ in range(1000):
        try:
            return tenure.connect(config.url, ttl=config.ttl)
        except BackendError:
            if time.monotonic() > deadline or slots.stopped:
                raise
            time.sleep(0.05)  # back-off before reconnecting (the server may be restarting)
    raise AssertionError("unreachable")


def _loop(config: WorkerConfig, slot: int, incarnation: int, slots: Slots, log: EventLog) -> None:
    rng = random.Random(config.seed * 1000 + slot * 100 + incarnation)
    me = log.client
    deadline = time.monotonic() + config.duration
    fenced = Store(config.directory, fenced=True)
    unfenced = Store(config.directory, fenced=False)
    pool = Pool(config.directory)
    client = _connect(config, slots, deadline)
    numbers = iter(range(1, 1_000_000))
    session_no = 0
    session: Any = None
    sides: dict[str, Any] = {}  # mode -> the session's lock object for it
    last_token = [0]  # the current (or last) tenure's token, for the lost callback

    def new_session() -> None:
        nonlocal session, session_no
        # Not ACQUIRING while the new session has no lease: there is nothing to lose yet.
        slots.set(slot, PHASE, IDLE)
        if session is not None:
            with contextlib.suppress(TenureError):
                session.close()
        session_no = next(numbers)
        n = session_no
        slots.set(slot, SESSION, n)
        session = client.session(ttl=config.ttl)
        # Open the lease now (etcd grants it with a round trip), so that a client in ACQUIRING
        # is queued in a live session; if this fails, acquire() opens it.
        with contextlib.suppress(TenureError):
            session._use()

        def session_lost(_s: object) -> None:
            slots.bump(slot, SESSION_LOST)
            log.note("session-lost", session=n)

        def lock_lost(lk: tenure.Lock) -> None:
            # A release that finds the entry gone reports the loss after forgetting the grant.
            grant = lk._grant
            slots.bump(slot, LOST)
            log.note("lost", token=grant.token if grant is not None else last_token[0], session=n)

        session.on_lost(session_lost)
        if config.primitive == "rwlock":
            rw = session.rwlock(config.name)
            sides.update(exclusive=rw.write, shared=rw.read)
        elif config.primitive == "semaphore":
            sides.update(permit=session.semaphore(config.name, limit=config.limit))
        else:
            sides.update(exclusive=session.lock(config.name))
        for side in sides.values():
            side.on_lost(lock_lost)

    new_session()
    base = (slot + 1) * 10**9 + incarnation * 10**6
    try:
        for i in range(config.max_ops):
            if slots.stopped or time.monotonic() > deadline:
                return
            if session.lost.is_set():
                new_session()
            if session._lease is None:  # opening it failed (the server was out of reach)
                try:
                    session._use(deadline=time.monotonic() + config.acquire_timeout)
                except TenureError as exc:
                    log.note("error", session=session_no, detail=f"open: {exc}"[:200])
                    time.sleep(0.02)  # back-off after a backend error
                    continue
            if config.primitive == "semaphore":
                mode = "permit"
            elif config.primitive == "rwlock" and rng.random() >= config.write_ratio:
                mode = "shared"
            else:
                mode = "exclusive"
            lock = sides[mode]
            slots.set(slot, PHASE, ACQUIRING)
            log.note("acquiring", session=session_no, mode=mode)
            try:
                got = lock.acquire(timeout=config.acquire_timeout)
            except LockLostError as exc:
                log.note("acquire-lost", session=session_no, detail=str(exc)[:200])
                continue
            except BackendError as exc:
                log.note("error", session=session_no, detail=f"acquire: {exc}"[:200])
                time.sleep(0.02)  # back-off after a backend error
                continue
            if not got:
                log.note("acquire-timeout", session=session_no)
                continue
            try:
                token = lock.token
            except NotHeldError:  # lost between the grant and here: nothing to do
                log.note("lost-before-enter", session=session_no)
                continue
            last_token[0] = token
            log.note("enter", token, session_no, "lost" if lock.lost.is_set() else "", mode)
            slots.set(slot, SESSION, session_no)
            slots.set(slot, TOKEN, token)
            slots.set(slot, MODE, MODES.index(mode))
            slots.bump(slot, GRANTS)
            slots.set(slot, PHASE, ENTERED)
            pause = rng.uniform(config.pause_min, config.pause_max)  # the workload's pause
            # READ means "in the pause", never inside a store; WRITING: past the pause.
            if mode == "permit":
                pool.occupy(token, me)
                slots.set(slot, PHASE, READ)
                time.sleep(pause)
                slots.set(slot, PHASE, WRITING)
                pool.vacate(token, me)
            elif mode == "shared":
                fenced.shared_read(token, me)
                unfenced.shared_read(token, me)
                slots.set(slot, PHASE, READ)
                time.sleep(pause)
                slots.set(slot, PHASE, WRITING)
                fenced.shared_read(token, me)
                unfenced.shared_read(token, me)
            else:
                element = base + i
                seen_f = fenced.read(token, me)
                seen_u = unfenced.read(token, me)
                slots.set(slot, PHASE, READ)
                time.sleep(pause)
                slots.set(slot, PHASE, WRITING)
                if seen_f is not None:
                    fenced.write(token, me, seen_f, element)
                unfenced.write(token, me, seen_u or [], element)
                slots.set(slot, WRITTEN_TOKEN, token)  # a writer's write (the nemesis waits on it)
            slots.set(slot, PHASE, WRITTEN)
            log.note("exit", token, session_no)
            slots.set(slot, PHASE, RELEASING)
            try:
                lock.release()
                log.note("released", token, session_no)
            except LockLostError as exc:
                log.note("release-lost", token, session_no, str(exc)[:200])
            except BackendError as exc:
                log.note("error", token, session_no, f"release: {exc}"[:200])
            slots.set(slot, PHASE, IDLE)
    finally:
        with contextlib.suppress(TenureError):
            client.close()
