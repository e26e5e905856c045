"""rwlock and semaphore: the libraries, the scenarios, the worker for shared holders, summaries.

tenure's ``rwlock(name).read`` / ``.write`` and ``semaphore(name, limit=N)`` are measured against
tenure's own plain lock on the same backend in the same round (the targets are ratios to it), and
next to the peers that have such primitives: kazoo's ReadLock/WriteLock and Semaphore
(ZooKeeper), plain ``pg_advisory_lock_shared`` (PostgreSQL), filelock's ReadWriteLock and
portalocker's BoundedSemaphore (files).

A :class:`PrimLibrary` makes a client for one *role*: ``lock`` (tenure's plain lock, the
baseline), ``read``, ``write`` or ``permit`` (with a limit). A :class:`Scenario` says which roles
contend. One holder at a time (a plain lock, a semaphore with limit 1) runs in the lock harness
(``_workers.contended_worker``: handoff, fairness, the protected counter); several holders at
once (readers, a writer among readers, permits) run in :func:`shared_worker`, where every
process owns one "inside" slot in shared memory and, on entering and before leaving, checks the
primitive's promise against the others' slots: a writer alone, readers never beside a writer, at
most ``limit`` permit holders. A slot is set only between a grant and the release call, so a
violation seen is a real one.

A backend whose driver does not implement a mode yet raises ``ConfigurationError("... mode is
not supported yet")``: :func:`probe` finds that once per backend, and the runner records the
rows as "n/a (not supported)" instead of failing.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._impls import (
    LOCK_TTL,
    BenchClient,
    BenchLock,
    FloorOp,
    Library,
    PgAdvisoryClient,
    Target,
    _kazoo,
    _KazooLock,
    _TenureLock,
)
from benchmarks._stats import summarize, summarize_rounds
from benchmarks._workers import Slots, run_worker

__all__ = [
    "PEERS",
    "TENURE",
    "PrimLibrary",
    "Scenario",
    "SharedArgs",
    "is_unsupported",
    "primitive_libraries",
    "probe",
    "scenarios",
    "shared_worker",
    "summarize_primitives",
    "tenure_lock_floor",
    "uncontended_roles",
]


class NotSupported(RuntimeError):
    """The installed library (or the backend's driver) has no such primitive."""


def is_unsupported(error: BaseException | str) -> bool:
    """A driver's "mode is not supported yet", or a peer without the primitive."""
    return isinstance(error, NotSupported) or "not supported" in str(error)


# Libraries: one client per role.

Role = str  # "lock", "read", "write", "permit"


@dataclass(frozen=True)
class PrimLibrary:
    key: str
    #: role -> label; "{limit}" is filled in for permits
    labels: dict[Role, str]
    client: Callable[[Target, Role, int], BenchClient]
    requires: tuple[str, ...] = ()
    note: str = ""
    is_tenure: bool = False

    def library(self, role: Role, limit: int = 0) -> Library:
        """The lock-harness view of one role (what ``uncontended`` and the workers take)."""
        return Library(
            role_key(self.key, role, limit),
            self.labels[role].format(limit=limit),
            functools.partial(_make, self.client, role, limit),
            self.requires,
            note=self.note,
            is_tenure=self.is_tenure,
        )


def _make(
    client: Callable[[Target, Role, int], BenchClient], role: Role, limit: int, target: Target
) -> BenchClient:
    return client(target, role, limit)


def role_key(library: str, role: Role, limit: int = 0) -> str:
    return f"{library}:{role}{limit if role == 'permit' else ''}"


class TenurePrimitiveClient:
    def __init__(self, target: Target, role: Role, limit: int) -> None:
        import tenure

        self._client = tenure.connect(target.url, ttl=LOCK_TTL)
        self._role, self._limit = role, limit

    def lock(self, name: str) -> BenchLock:
        if self._role == "read":
            return _TenureLock(self._client.rwlock(name).read)
        if self._role == "write":
            return _TenureLock(self._client.rwlock(name).write)
        if self._role == "permit":
            return _TenureLock(self._client.semaphore(name, limit=self._limit))
        return _TenureLock(self._client.lock(name))

    def close(self) -> None:
        self._client.close()


def tenure_lock_floor(target: Target) -> FloorOp:
    """tenure's plain lock acquire + release: the reference the primitives are timed against,
    interleaved in the same child (so both see the same CPU placement)."""
    import tenure

    client = tenure.connect(target.url, ttl=LOCK_TTL)
    lock = client.lock("prim-floor")

    def acquire_release() -> None:
        if not lock.acquire(timeout=5.0):
            raise RuntimeError("tenure: a free lock was not granted in 5 s")
        lock.release()

    return acquire_release, client.close


class KazooPrimitiveClient:
    """kazoo's ReadLock / WriteLock and Semaphore recipes (sequential nodes; the semaphore
    watches the lease children, so every holder's release wakes every waiter)."""

    def __init__(self, target: Target, role: Role, limit: int) -> None:
        self._client = _kazoo(target)
        self._id = uuid.uuid4().hex
        self._role, self._limit = role, limit

    def lock(self, name: str) -> BenchLock:
        if self._role == "permit":
            path = f"/bench-kazoo-sem/{name}"
            return _KazooLock(self._client.Semaphore(path, self._id, max_leases=self._limit))
        path = f"/bench-kazoo-rw/{name}"
        recipe = self._client.ReadLock if self._role == "read" else self._client.WriteLock
        return _KazooLock(recipe(path, self._id))

    def close(self) -> None:
        self._client.stop()
        self._client.close()


class PgSharedClient(PgAdvisoryClient):
    """Plain session-level advisory locks: readers ``pg_advisory_lock_shared``, the writer
    ``pg_advisory_lock`` on the same key (PostgreSQL's lock queue orders them)."""

    def __init__(self, target: Target, role: Role, limit: int) -> None:
        super().__init__(target)
        self._shared = role == "read"

    def lock(self, name: str) -> BenchLock:
        return self._advisory(name, shared=self._shared)


class FilelockRWClient:
    """filelock's ReadWriteLock (a SQLite database per lock; waits in SQLite's busy handler)."""

    def __init__(self, target: Target, role: Role, limit: int) -> None:
        import filelock

        if not hasattr(filelock, "ReadWriteLock"):
            raise NotSupported(f"filelock {filelock.__version__} has no ReadWriteLock")
        self._dir = os.path.join(target.directory, "filelock")
        os.makedirs(self._dir, exist_ok=True)
        self._write = role == "write"

    def lock(self, name: str) -> BenchLock:
        return _FilelockRW(os.path.join(self._dir, name + ".db"), write=self._write)

    def close(self) -> None:
        return None


class _FilelockRW:
    def __init__(self, path: str, *, write: bool) -> None:
        import filelock

        self._lock = filelock.ReadWriteLock(path, is_singleton=False)
        self._take = self._lock.acquire_write if write else self._lock.acquire_read
        self._timeout_error = filelock.Timeout

    def acquire(self, timeout: float) -> bool:
        try:
            self._take(timeout=timeout)
        except self._timeout_error:
            return False
        return True

    def release(self) -> None:
        self._lock.release()


class PortalockerSemaphoreClient:
    """portalocker's BoundedSemaphore: one lock file per permit, tried in order, polled."""

    def __init__(self, target: Target, role: Role, limit: int) -> None:
        self._dir = os.path.join(target.directory, "portalocker")
        os.makedirs(self._dir, exist_ok=True)
        self._limit = limit

    def lock(self, name: str) -> BenchLock:
        import portalocker

        return _PortalockerSemaphore(
            portalocker.BoundedSemaphore(
                self._limit, name=name, directory=self._dir, fail_when_locked=False
            )
        )

    def close(self) -> None:
        return None


class _PortalockerSemaphore:
    def __init__(self, semaphore: Any) -> None:
        self._semaphore = semaphore

    def acquire(self, timeout: float) -> bool:
        return self._semaphore.acquire(timeout=timeout) is not None

    def release(self) -> None:
        self._semaphore.release()


TENURE = PrimLibrary(
    "tenure",
    {
        "lock": "tenure lock",
        "read": "tenure rwlock read",
        "write": "tenure rwlock write",
        "permit": "tenure semaphore limit={limit}",
    },
    TenurePrimitiveClient,
    ("tenure",),
    note="the backend's one queue; contenders carry a mode",
    is_tenure=True,
)

PEERS: dict[str, tuple[PrimLibrary, ...]] = {
    "zookeeper": (
        PrimLibrary(
            "kazoo",
            {
                "read": "kazoo ReadLock",
                "write": "kazoo WriteLock",
                "permit": "kazoo Semaphore max_leases={limit}",
            },
            KazooPrimitiveClient,
            ("kazoo",),
            note="sequential nodes; the Semaphore watches every lease",
        ),
    ),
    "postgres": (
        PrimLibrary(
            "pg-advisory",
            {"read": "pg_advisory_lock_shared", "write": "pg_advisory_lock (writer)"},
            PgSharedClient,
            ("psycopg",),
            note="no lease, no token, no records; PostgreSQL's lock queue",
        ),
    ),
    "file": (
        PrimLibrary(
            "filelock",
            {"read": "filelock ReadWriteLock read", "write": "filelock ReadWriteLock write"},
            FilelockRWClient,
            ("filelock",),
            note="SQLite transactions; waits in SQLite's busy handler",
        ),
        PrimLibrary(
            "portalocker",
            {"permit": "portalocker BoundedSemaphore({limit})"},
            PortalockerSemaphoreClient,
            ("portalocker",),
            note="one file lock per permit, polls every 0.25 s (its default)",
        ),
    ),
}


def primitive_libraries(backend: str, only: Sequence[str] | None) -> list[PrimLibrary]:
    libs = [TENURE, *PEERS.get(backend, ())]
    return [lib for lib in libs if only is None or lib.key in only]


# Scenarios.


@dataclass(frozen=True)
class Scenario:
    """One contended run: ``writers`` exclusive and ``readers`` shared contenders on one name.

    ``kind``: ``lock`` (tenure's plain lock), ``read`` (readers only), ``rw`` (a writer among
    readers), ``sem`` (``readers`` permit holders, ``limit`` permits).
    """

    library: PrimLibrary
    kind: str
    readers: int = 0
    writers: int = 0
    limit: int = 0

    @property
    def key(self) -> str:
        if self.kind == "rw":
            return f"{self.library.key} rw {self.writers}w+{self.readers}r"
        kind = f"sem{self.limit}" if self.kind == "sem" else self.kind
        return f"{self.library.key} {kind} x{self.procs}"

    @property
    def procs(self) -> int:
        return self.readers + self.writers

    @property
    def one_holder(self) -> bool:
        """Exclusive by nature: measured in the lock harness (handoff, counter)."""
        return self.kind == "lock" or (self.kind == "sem" and self.limit == 1)

    def roles(self) -> list[Library]:
        """The :class:`Library` per role, exclusive (writer) first."""
        lib = self.library
        if self.kind == "lock":
            return [lib.library("lock")]
        if self.kind == "sem":
            return [lib.library("permit", self.limit)]
        if self.kind == "read":
            return [lib.library("read")]
        return [lib.library("write"), lib.library("read")]

    def workers(self) -> list[tuple[Library, bool, Role]]:
        """Per process: its library, whether it is exclusive, and its role."""
        roles = self.roles()
        if self.kind == "rw":
            return [(roles[0], True, "write")] * self.writers + [
                (roles[1], False, "read")
            ] * self.readers
        role = {"lock": "lock", "sem": "permit", "read": "read"}[self.kind]
        return [(roles[0], self.one_holder, role)] * self.procs

    def describe(self) -> dict[str, Any]:
        return {
            "library": self.library.key,
            "kind": self.kind,
            "readers": self.readers,
            "writers": self.writers,
            "limit": self.limit,
            "label": self.label,
            "tenure": self.library.is_tenure,
        }

    @property
    def label(self) -> str:
        roles = self.roles()
        if self.kind == "rw":
            return f"{roles[0].label} + {roles[1].label}"
        return roles[0].label


def scenarios(
    libs: Sequence[PrimLibrary], procs: int, rw_readers: Sequence[int], sweep_sem: bool
) -> list[Scenario]:
    """What one round runs. tenure: its plain lock (the baseline), semaphores with limit 1 and
    4, readers only, and a writer among 2..32 readers (``procs - 1`` is the ``procs``-process
    mix); with ``sweep_sem`` (the backend counts server requests) limit 4 at 32 processes too.
    Peers: the same shapes at ``procs`` processes, for the primitives they have."""
    out: list[Scenario] = []
    for lib in libs:
        has = set(lib.labels)
        if lib.is_tenure:
            out.append(Scenario(lib, "lock", writers=procs))
        if "permit" in has:
            out.append(Scenario(lib, "sem", readers=procs, limit=1))
            for n in sorted({procs, 32} if sweep_sem and lib.is_tenure else {procs}):
                out.append(Scenario(lib, "sem", readers=n, limit=4))
        if "read" in has:
            out.append(Scenario(lib, "read", readers=procs))
            sweep = sorted({procs - 1, *rw_readers}) if lib.is_tenure else [procs - 1]
            out += [Scenario(lib, "rw", readers=n, writers=1) for n in sweep]
    return out


def uncontended_roles(libs: Sequence[PrimLibrary]) -> list[Library]:
    """One process, one name: each library's read, write (tenure) and limit-1 permit."""
    out: list[Library] = []
    for lib in libs:
        has = set(lib.labels)
        if "read" in has:
            out.append(lib.library("read"))
        if "write" in has and lib.is_tenure:
            out.append(lib.library("write"))
        if "permit" in has:
            out.append(lib.library("permit", 1))
    return out


def probe(library: Library, target: Target, name: str) -> str:
    """ "" when one acquire + release works; the reason when the primitive is not supported
    (by the installed peer, or by the backend's driver yet). Any other failure raises."""
    try:
        client = library.make(target)
    except NotSupported as exc:
        return str(exc)
    try:
        lock = client.lock(name)
        try:
            granted = lock.acquire(5.0)
        except Exception as exc:
            if is_unsupported(exc):
                return f"{type(exc).__name__}: {exc}"
            raise
        if not granted:
            raise RuntimeError(f"{library.label}: a free lock was not granted in 5 s")
        lock.release()
    finally:
        client.close()
    return ""


# The worker for several holders at once.


@dataclass(frozen=True)
class SharedArgs:
    workers: tuple[tuple[Library, bool, Role], ...]  # per process: library, exclusive, role
    target: Target
    name: str
    acquire_timeout: float
    max_grants: int
    limit: int = 0  # most holders at once (semaphore), 0: any number of shared holders
    max_errors: int = 50
    exit_wait: float = 120.0

    @property
    def slots(self) -> int:
        return Slots.SIZE + len(self.workers)


def shared_worker(
    args: SharedArgs, index: int, shared: Any, ready: Any, start: Any, leave: Any, send: Any
) -> None:
    """One contending process: acquire → check the others' slots → release, until END_NS."""
    library, exclusive, role = args.workers[index]
    run_worker(
        library,
        args.target,
        args.name,
        index,
        shared,
        ready,
        start,
        leave,
        send,
        functools.partial(_share, args, exclusive),
        exit_wait=args.exit_wait,
        extra={"role": role, "waits_ns": [], "max_inside": 0},
    )


def _inside(args: SharedArgs, shared: Any, me: int, exclusive: bool) -> tuple[int, bool]:
    """Holders inside now (this one included) and whether that breaks the promise."""
    count, writer = 0, False
    for i, (_, excl, _role) in enumerate(args.workers):
        if shared[Slots.SIZE + i]:
            count += 1
            writer = writer or (excl and i != me)
    if exclusive:
        return count, count > 1
    return count, writer or (args.limit > 0 and count > args.limit)


def _share(
    args: SharedArgs,
    exclusive: bool,
    lock: BenchLock,
    me: int,
    end_ns: int,
    shared: Any,
    result: dict[str, Any],
) -> None:
    index = me - 1
    slot = Slots.SIZE + index
    waits: list[int] = result["waits_ns"]
    while time.monotonic_ns() < end_ns and result["grants"] < args.max_grants:
        t0 = time.monotonic_ns()
        try:
            ok = lock.acquire(args.acquire_timeout)
        except Exception as exc:
            if is_unsupported(exc):
                raise
            result["errors"] += 1
            result["first_error"] = result["first_error"] or f"{type(exc).__name__}: {exc}"
            if result["errors"] >= args.max_errors:
                return
            time.sleep(0.01)
            continue
        t_acquired = time.monotonic_ns()
        if not ok:
            result["timeouts"] += 1
            continue
        shared[slot] = 1
        count, broken = _inside(args, shared, index, exclusive)
        result["grants"] += 1
        if t_acquired <= end_ns:
            result["grants_in_window"] += 1
            waits.append(t_acquired - t0)
        count2, broken2 = _inside(args, shared, index, exclusive)
        result["overlaps"] += broken + broken2
        result["max_inside"] = max(result["max_inside"], count, count2)
        shared[slot] = 0
        try:
            lock.release()
        except Exception as exc:
            result["errors"] += 1
            result["first_error"] = result["first_error"] or f"{type(exc).__name__}: {exc}"
            if result["errors"] >= args.max_errors:
                return


def shared_metrics(results: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    """Throughput, and per role (``write``, ``read``, ``permit``): rate, wait, timeouts."""
    grants = sum(r["grants_in_window"] for r in results)
    metrics: dict[str, Any] = {
        "acq_per_s": grants / duration,
        "grants": grants,
        "max_inside": max((r["max_inside"] for r in results), default=0),
    }
    roles: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        roles.setdefault(r["role"], []).append(r)
    for role, rows in roles.items():
        counts = [r["grants_in_window"] for r in rows]
        wait = summarize([w for r in rows for w in r["waits_ns"]])
        metrics[f"{role}_acq_per_s"] = sum(counts) / duration
        metrics[f"{role}_wait_p50_us"] = wait["p50_us"]
        metrics[f"{role}_wait_p99_us"] = wait["p99_us"]
        metrics[f"{role}_wait_max_us"] = (
            max((w for r in rows for w in r["waits_ns"]), default=0) / 1000
        )
        metrics[f"{role}_timeouts"] = sum(r["timeouts"] for r in rows)
        metrics[f"{role}_grants"] = sum(counts)
    crowd = max(roles.values(), key=len, default=[])  # readers, or permit holders
    counts = [r["grants_in_window"] for r in crowd]
    metrics["fairness"] = min(counts) / max(counts) if counts and max(counts) > 0 else 0.0
    return metrics


# Aggregation across rounds.


def summarize_primitives(prim: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and spreads per uncontended role and per scenario, and same-round ratios of each
    scenario's throughput to tenure's plain lock (``vs_lock``)."""
    per = [r["primitives"] for r in rounds if "primitives" in r]
    out: dict[str, Any] = {"uncontended": {}, "contended": {}, "ratios": {}}
    for key in prim["uncontended"]:
        out["uncontended"][key] = _summarize_rows([p["uncontended"].get(key, {}) for p in per])
    baseline = next((k for k, s in prim["scenarios"].items() if s["kind"] == "lock"), None)
    for key in prim["scenarios"]:
        rows = [p["contended"].get(key, {}) for p in per]
        out["contended"][key] = _summarize_rows(rows)
        ratios = []
        for p, row in zip(per, rows, strict=True):
            base = p["contended"].get(baseline or "", {}).get("acq_per_s")
            if base and row.get("acq_per_s"):
                ratios.append({"vs_lock": row["acq_per_s"] / base})
        out["ratios"][key] = summarize_rounds(ratios)
    return out


def _summarize_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r and "error" not in r and "unsupported" not in r]
    item: dict[str, Any] = summarize_rounds(ok)
    unsupported = sorted({r["unsupported"] for r in rows if "unsupported" in r})
    if unsupported:
        item["unsupported"] = unsupported[0]
    failed = [r["error"] for r in rows if "error" in r]
    if failed:
        item["failed_runs"] = failed
    extra = sorted({e for r in ok for e in r.get("first_errors", [])})
    if extra:
        item["first_errors"] = extra[:3]
    if ok and "commands" in ok[-1]:
        item["commands_last_round"] = ok[-1]["commands"]
        item["grants_last_round"] = ok[-1]["grants_total"]
    return item
