"""A bounded run: several client processes, one fault class injected again and again.

:func:`run` starts ``workers`` client processes (``multiprocessing`` spawn, see
:mod:`tests.faults.worker`), lets them contend for one lock, and injects one fault class at a
time, ``injections`` times, ``gap`` seconds of normal operation apart, until the duration, the
acquisition count or (``settle``) the injections are done. Every wait polls a condition with a
deadline; every fault is healed in a ``finally``; only processes this module started are
signalled, by PID.

The primitive (:attr:`RunConfig.primitive`) is ``lock``, ``rwlock`` (writers and readers, see
:mod:`tests.faults.worker`) or ``semaphore`` (``limit`` permits); :data:`PRIMITIVE_FAULTS` lists
the fault classes run for the new primitives (those whose holder is what changes). In an rwlock
run the victims of the holder faults are a reader, then a writer, in turn.

Fault classes (:data:`FAULTS`; ``holder`` = the client inside its critical section, found through
shared memory and cross-checked with the backend's holders' pids):

* ``none``: no fault (the baseline).
* ``pause-holder``: SIGSTOP the holder between its read and its write; on leased backends keep it
  stopped until a newer holder has written (so past its TTL), then SIGCONT; on the file backend
  (no lease) keep it stopped for 1.5 x TTL and check that nobody got the lock meanwhile. rwlock:
  a reader is stopped between its two reads, and kept stopped, as a writer is, until a newer
  writer has written (file: no conflicting grant, i.e. no writer, meanwhile). Semaphore: until
  the pool counts ``limit`` other occupants (its permit was given away); file: check that this
  never happens while it is stopped.
* ``kill-holder``: SIGKILL the holder, wait for the next grant, start a replacement client (a
  semaphore's: evict the stopped victim from the pool just before the kill).
* ``kill-server``: SIGKILL the Redis server while a client holds the lock and start it again at
  once on the same port, empty (no persistence: the data-loss case). etcd: SIGKILL the single
  node and restart it on its data dir (keys and leases survive; leases are extended).
* ``pause-server``: SIGSTOP the Redis server until the holder's ``lost`` fires, then SIGCONT.
* ``cut-off-holder``: blackhole the holder's own TCP proxy until its ``lost`` fired and a newer
  conflicting holder was granted (a reader's: a writer; a permit's: ``limit`` others hold at
  once), then heal.
* ``cut-off-waiter``: blackhole a queued waiter's proxy until its session is lost, then heal (a
  waiter's session expired while queued: it must not be granted).
* ``drop-acquire-reply``: drop the next reply to a client that is acquiring (queued or about to
  be granted); the acquire must still succeed, once, leaving no orphan.
* ``drop-release-reply``: drop the next reply to the holder (in practice: its release's); the
  retried release must not delete the next holder's entry.
* ``failover`` (``redis-sentinel``: a master, a replica, three sentinels started by the run):
  SIGKILL the master while a client holds the lock; the sentinels promote the replica, which
  may lack the newest writes (asynchronous replication): the fenced resource must refuse every
  stale write, the unfenced twin shows the price. Before the next injection the old master
  comes back (empty) and the sentinels make it the new master's replica.
* ``cluster-failover`` (``redis-cluster``: 3 masters + 3 replicas started by the run): the
  same with the master of the lock's slot; its replica takes the slot over.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import tenure
from tenure.errors import TenureError
from tests.faults import worker as w
from tests.faults.history import Event, Fault, Report, check
from tests.faults.resource import Pool, Store
from tests.servers import RedisServer, ServerProcess, TcpProxy
from tests.servers.redis import (
    RedisCluster,
    RedisSentinelGroup,
    start_redis_cluster,
    start_redis_sentinel,
)
from tests.servers.zookeeper import ZooKeeperEnsemble

SPAWN = multiprocessing.get_context("spawn")

FAULTS: dict[str, tuple[str, ...]] = {
    "file": ("none", "pause-holder", "kill-holder"),
    "redis": (
        "none",
        "pause-holder",
        "kill-holder",
        "kill-server",
        "pause-server",
        "cut-off-holder",
        "cut-off-waiter",
        "drop-acquire-reply",
        "drop-release-reply",
    ),
    # pause-server does not apply: SIGSTOP of the postmaster leaves the sessions (backends) and
    # their locks running (tests/backends/test_postgres.py covers it).
    "postgres": (
        "none",
        "pause-holder",
        "kill-holder",
        "kill-server",
        "cut-off-holder",
        "cut-off-waiter",
        "drop-acquire-reply",
        "drop-release-reply",
    ),
    # ZooKeeper: the client-side faults. Left out: the server faults (a killed standalone
    # ZooKeeper comes back with its data and sessions, so there is no data-loss case; the
    # ensemble's leader kill is tests/backends/test_zookeeper.py's job), and cut-off-waiter: a
    # ZooKeeper session is opened by a round trip, so a waiter cut off while opening it has no
    # session to lose (its acquire fails with BackendUnavailableError instead), which this
    # fault cannot tell apart from a miss; test_zookeeper.py cuts off an established waiter.
    "zookeeper": (
        "none",
        "pause-holder",
        "kill-holder",
        "cut-off-holder",
        "drop-acquire-reply",
        "drop-release-reply",
    ),
    # etcd: server faults on a single node (SIGKILL + restart keeps its data and leases).
    "etcd": (
        "none",
        "pause-holder",
        "kill-holder",
        "kill-server",
        "pause-server",
        "cut-off-holder",
        "cut-off-waiter",
        "drop-acquire-reply",
        "drop-release-reply",
    ),
    # Redlock on 5 masters started by the run itself (client-side faults; master faults are in
    # tests/backends/test_redlock.py).
    "redlock": ("none", "pause-holder", "kill-holder"),
    # Redis with replicas, started by the run itself: a master killed while the lock is held.
    "redis-sentinel": ("failover",),
    "redis-cluster": ("cluster-failover",),
}
#: Backends whose protocol cannot lose one reply and go on: there a lost reply is a reply
#: dropped together with its connection.
SEVER_ON_DROP = frozenset({"postgres"})
PROXY_FAULTS = frozenset(
    {"cut-off-holder", "cut-off-waiter", "drop-acquire-reply", "drop-release-reply"}
)
SERVER_FAULTS = frozenset({"kill-server", "pause-server"})
#: The fault classes run for rwlock and semaphore (where the backend has them in FAULTS).
PRIMITIVE_FAULTS = ("pause-holder", "kill-holder", "cut-off-holder")
PRIMITIVES = ("lock", "rwlock", "semaphore")
LOCK_NAME = "jobs/nightly"
HOLDING = frozenset({w.ENTERED, w.READ, w.WRITING, w.WRITTEN})


def faults_of(backend: str, primitive: str) -> tuple[str, ...]:
    """The fault classes a run of ``primitive`` on ``backend`` covers."""
    if primitive == "lock":
        return FAULTS[backend]
    return tuple(f for f in FAULTS[backend] if f in PRIMITIVE_FAULTS)


@dataclass(frozen=True)
class RunConfig:
    backend: str
    fault: str
    workers: int = 4
    ttl: float = 1.0
    duration: float = 20.0  # seconds of workload at most
    max_acquisitions: int = 100_000
    injections: int = 3
    gap: float = 0.5  # seconds of normal operation before each injection
    settle: int = 20  # stop this many grants after the last injection (0: run to the end)
    pause_min: float = 0.001
    pause_max: float = 0.010
    seed: int = 0
    primitive: str = "lock"  # "lock" | "rwlock" | "semaphore"
    limit: int = 2  # a semaphore's

    @property
    def fault_timeout(self) -> float:
        return 3 * self.ttl + 10.0


@dataclass
class RunResult:
    config: RunConfig
    report: Report
    faults: list[Fault]
    elapsed: float
    directory: Path
    skipped: int = 0  # injections given up because no client was in the wanted phase in time
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class _Run:
    def __init__(
        self, config: RunConfig, directory: Path, server: ServerProcess | ZooKeeperEnsemble | None
    ) -> None:
        self.cfg = config
        self.dir = directory
        self.server = server
        n = config.workers
        self.array: Any = SPAWN.RawArray("q", 1 + n * w.NFIELDS)
        self.slots = w.Slots(self.array)
        self.procs: dict[int, BaseProcess] = {}
        self.incarnation: dict[int, int] = {}
        self.deaths: dict[str, int] = {}
        self.killed: set[int] = set()
        self.faults: list[Fault] = []
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.skipped = 0
        self.injected = 0
        self.proxies: list[TcpProxy] = []
        self.masters: list[RedisServer] = []
        self.sentinel: RedisSentinelGroup | None = None
        self.cluster: RedisCluster | None = None
        namespace = "f" + uuid.uuid4().hex[:10]
        self.namespace = namespace
        if config.backend == "file":
            self.direct = f"file://{directory / 'locks'}?namespace={namespace}"
            self.urls = [self.direct] * n
        elif config.backend == "redis":
            assert server is not None, "the redis backend needs a server"
            query = f"?namespace={namespace}&socket_timeout=1"
            self.direct = server.url + query
            if config.fault in PROXY_FAULTS:
                self.proxies = [TcpProxy(server.host, server.port) for _ in range(n)]
                self.urls = [p.url_for("redis", "/0") + query for p in self.proxies]
            else:
                self.urls = [self.direct] * n
        elif config.backend == "postgres":
            assert server is not None, "the postgres backend needs a server"
            query = f"?namespace={namespace}&connect_timeout=2"
            self.direct = f"postgresql://postgres@{server.host}:{server.port}/postgres{query}"
            if config.fault in PROXY_FAULTS:
                self.proxies = [TcpProxy(server.host, server.port) for _ in range(n)]
                self.urls = [
                    f"postgresql://postgres@{p.endpoint}/postgres{query}" for p in self.proxies
                ]
            else:
                self.urls = [self.direct] * n
        elif config.backend == "zookeeper":
            assert isinstance(server, ZooKeeperEnsemble), "the zookeeper backend needs a server"
            query = f"?namespace={namespace}&request_timeout=1"
            self.direct = server.url + query
            if config.fault in PROXY_FAULTS:
                node = server.nodes[0]
                self.proxies = [TcpProxy("127.0.0.1", node.port) for _ in range(n)]
                self.urls = [p.url_for("zookeeper") + query for p in self.proxies]
            else:
                self.urls = [self.direct] * n
        elif config.backend == "etcd":
            assert server is not None, "the etcd backend needs a server (one EtcdNode)"
            query = f"?namespace={namespace}&request_timeout=1"
            self.direct = f"etcd://{server.host}:{server.port}" + query
            if config.fault in PROXY_FAULTS:
                self.proxies = [TcpProxy(server.host, server.port) for _ in range(n)]
                self.urls = [p.url_for("etcd") + query for p in self.proxies]
            else:
                self.urls = [self.direct] * n
        elif config.backend == "redlock":
            from tests.servers import redlock_url, start_redis_masters

            self.masters = start_redis_masters(5)
            self.direct = redlock_url(self.masters) + f"?namespace={namespace}"
            self.urls = [self.direct] * n
        elif config.backend == "redis-sentinel":
            self.sentinel = start_redis_sentinel(replicas=1, sentinels=3)
            self.direct = self.sentinel.url + f"?namespace={namespace}&socket_timeout=1"
            self.urls = [self.direct] * n
        elif config.backend == "redis-cluster":
            self.cluster = start_redis_cluster(3, 1)
            self.direct = self.cluster.url + f"&namespace={namespace}&socket_timeout=1"
            self.urls = [self.direct] * n
        else:
            raise ValueError(f"no fault set-up for backend {config.backend!r}")
        self.leases = config.backend != "file"
        self.inspect = tenure.connect(self.direct, ttl=config.ttl)
        self.pool = Pool(directory)
        self.kind = config.primitive

    # -- clients ------------------------------------------------------------------

    def start(self, slot: int) -> None:
        incarnation = self.incarnation.get(slot, -1) + 1
        self.incarnation[slot] = incarnation
        self.slots.set(slot, w.PHASE, w.STARTING)
        self.slots.set(slot, w.PID, 0)
        cfg = w.WorkerConfig(
            url=self.urls[slot],
            name=LOCK_NAME,
            ttl=self.cfg.ttl,
            directory=str(self.dir),
            duration=self.cfg.duration + 3 * self.cfg.fault_timeout,
            max_ops=1_000_000,
            pause_min=self.cfg.pause_min,
            pause_max=self.cfg.pause_max,
            acquire_timeout=3 * self.cfg.ttl + 2,
            seed=self.cfg.seed,
            primitive=self.cfg.primitive,
            limit=self.cfg.limit,
        )
        proc = SPAWN.Process(
            target=w.run, args=(cfg, slot, incarnation, self.array), name=f"fault-client-{slot}"
        )
        proc.start()
        self.procs[slot] = proc

    def client_of(self, slot: int) -> str:
        return w.client_id(slot, self.incarnation[slot])

    def grants(self) -> int:
        return sum(self.slots.get(s, w.GRANTS) for s in range(self.slots.count))

    def reap(self) -> None:
        for slot, proc in self.procs.items():
            if proc.exitcode is not None and proc.pid not in self.killed:
                self.killed.add(proc.pid or 0)  # report once
                self.errors.append(f"client {self.client_of(slot)} exited with {proc.exitcode}")

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Poll ``condition`` every few ms until true; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while not condition():
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.005)
        return True

    def find(
        self,
        phases: set[int],
        timeout: float,
        exclude: int = -1,
        *,
        in_live_session: bool = False,
        mode: int = -1,
    ) -> int | None:
        """A live slot in one of ``phases`` (polled), or None after ``timeout``.

        ``mode``: only a slot whose tenure has this mode (an index in ``worker.MODES``).

        ``in_live_session``: only a slot whose current session is not lost yet (a worker
        replaces a session only once it is lost, so sessions 1..n-1 are lost and session n
        is live while fewer than n losses were counted; within one incarnation of a worker,
        so for faults that do not restart workers).
        """
        found: list[int] = []

        def look() -> bool:
            for s in range(self.slots.count):
                if s == exclude or self.slots.get(s, w.PHASE) not in phases:
                    continue
                if mode >= 0 and self.slots.get(s, w.MODE) != mode:
                    continue
                if in_live_session and self.slots.get(s, w.SESSION_LOST) >= self.slots.get(
                    s, w.SESSION
                ):
                    continue
                found.append(s)
                return True
            return False

        return found[0] if self.wait(look, timeout) else None

    def newer_grant(self, token: int, exclude: int = -1) -> bool:
        return any(
            self.slots.get(s, w.TOKEN) > token for s in range(self.slots.count) if s != exclude
        )

    def cross_check(self, pid: int) -> None:
        """The shared-memory holder must be the backend's holder (``client.holder().pid``; for
        rwlocks and semaphores, one of the holders)."""
        try:
            if self.kind == "lock":
                holder = self.inspect.holder(LOCK_NAME)
                pids = [] if holder is None else [holder.pid]
            else:
                found = self.inspect.contenders(LOCK_NAME, kind=self.kind)
                pids = [h.pid for h in found if not h.waiting]
        except TenureError as exc:
            self.notes.append(f"holder() failed: {exc}")
            return
        if pid not in pids:
            self.notes.append(f"the backend's holders are {pids}, shared memory says {pid}")

    def occupants(self) -> int:
        """The pool's occupants now (its state file is replaced atomically: no flock needed)."""
        try:
            return len(json.loads((self.dir / "pool.json").read_text()))
        except FileNotFoundError:
            return 0

    def conflicting_grant(self, token: int, victim: int) -> bool:
        """Another client was granted after ``token`` in a mode that conflicts with the victim's
        (any mode for an exclusive victim, a writer for a reader); for a permit, ``limit``
        other clients hold one at once (past their grant, before their release): the victim's
        permit was given away."""
        if self.kind == "semaphore":
            others = range(self.slots.count)
            held = sum(1 for s in others if s != victim and self.slots.get(s, w.PHASE) in HOLDING)
            return held >= self.cfg.limit
        shared = self.slots.get(victim, w.MODE) == w.MODES.index("shared")
        return any(
            self.slots.get(s, w.TOKEN) > token
            and not (shared and self.slots.get(s, w.MODE) == w.MODES.index("shared"))
            for s in range(self.slots.count)
            if s != victim
        )

    def record(self, kind: str, t: int, slot: int, token: int, session: int) -> Fault:
        fault = Fault(kind, t, time.monotonic_ns(), self.client_of(slot), token, session)
        self.faults.append(fault)
        return fault

    # -- faults -------------------------------------------------------------------

    def inject(self) -> None:
        kind = self.cfg.fault
        method = getattr(self, "fault_" + kind.replace("-", "_"))
        if not method():
            self.skipped += 1
        self.injected += 1

    def victim_mode(self) -> int:
        """The mode of the holder to hit: in an rwlock run a reader, then a writer, in turn (so
        one injection covers the new case, two cover both); else any (-1)."""
        if self.kind != "rwlock":
            return -1
        return w.MODES.index("shared" if self.injected % 2 == 0 else "exclusive")

    def _stop_in_read(self, timeout: float) -> tuple[int, int, int, int] | None:
        """SIGSTOP a client in its pause between read and write: (slot, pid, token, t) or None.

        ``t`` is the ``monotonic_ns`` just before the SIGSTOP: from then on it cannot act.
        """
        deadline = time.monotonic() + timeout
        for _ in range(1000):
            left = deadline - time.monotonic()
            slot = self.find({w.READ}, max(0.0, left), mode=self.victim_mode())
            if slot is None:
                return None
            pid, token = self.slots.get(slot, w.PID), self.slots.get(slot, w.TOKEN)
            t = time.monotonic_ns()
            os.kill(pid, signal.SIGSTOP)
            # The signal is delivered asynchronously: look at the phase only once it is stopped
            # (else it may stop a moment later inside the store, holding the store's flock).
            if not self.wait(functools.partial(stopped, pid), 5.0):
                os.kill(pid, signal.SIGCONT)
                self.errors.append(f"pid {pid} did not stop within 5 s")
                return None
            if self.slots.get(slot, w.PHASE) == w.READ and self.slots.get(slot, w.TOKEN) == token:
                return slot, pid, token, t
            os.kill(pid, signal.SIGCONT)  # it left its critical section meanwhile: try again
        return None

    def fault_none(self) -> bool:
        return True

    def fault_pause_holder(self) -> bool:
        stopped = self._stop_in_read(self.cfg.fault_timeout)
        if stopped is None:
            return False
        slot, pid, token, t = stopped
        session = self.slots.get(slot, w.SESSION)
        try:
            self.cross_check(pid)
            if self.kind == "semaphore":
                # The victim still counts as an occupant: `limit` others mean its permit went.
                def over() -> bool:
                    return self.occupants() > self.cfg.limit

                if self.leases:
                    if not self.wait(over, self.cfg.fault_timeout):
                        self.errors.append("pause-holder: its permit was not given away in time")
                elif self.wait(over, 1.5 * self.cfg.ttl):
                    self.errors.append("file: the pool went over the limit while the holder slept")
            elif self.leases:
                # Keep it stopped until a newer holder has written: its write is then stale.
                def newer_write() -> bool:
                    return any(
                        self.slots.get(s, w.WRITTEN_TOKEN) > token
                        for s in range(self.slots.count)
                        if s != slot
                    )

                if not self.wait(newer_write, self.cfg.fault_timeout):
                    self.errors.append("pause-holder: no newer holder wrote within the timeout")
            else:
                # No lease: nobody may get the lock while the holder is stopped.
                granted = self.wait(lambda: self.conflicting_grant(token, slot), 1.5 * self.cfg.ttl)
                if granted:
                    self.errors.append("file: a newer holder was granted while the holder slept")
        finally:
            os.kill(pid, signal.SIGCONT)
        self.record("pause-holder", t, slot, token, session)
        return True

    def fault_kill_holder(self) -> bool:
        stopped = self._stop_in_read(self.cfg.fault_timeout)  # stop first: a stable victim
        if stopped is None:
            return False
        slot, pid, token, t = stopped  # stopped, never continued: it is dead from `t` on
        session = self.slots.get(slot, w.SESSION)
        self.cross_check(pid)
        victim = self.client_of(slot)
        self.killed.add(pid)
        if self.kind == "semaphore":
            # Before the kill frees its permit (the file backend frees it at once); it is
            # stopped, so it never runs again: its occupancy ends with its life.
            self.pool.evict(victim)
        os.kill(pid, signal.SIGKILL)
        self.deaths[victim] = t
        self.procs[slot].join(10)
        if not self.wait(lambda: self.conflicting_grant(token, slot), self.cfg.fault_timeout):
            self.errors.append("kill-holder: nobody took over within the timeout")
        self.faults.append(Fault("kill-holder", t, time.monotonic_ns(), victim, token, session))
        self.start(slot)
        if not self.wait(lambda: self.slots.get(slot, w.PHASE) != w.STARTING, 60):
            self.errors.append("kill-holder: the replacement client did not start")
        return True

    def _holder_in_read(self) -> tuple[int, int, int, int] | None:
        """A client between its read and its write: (slot, pid, token, session) or None."""
        slot = self.find({w.READ}, self.cfg.fault_timeout, mode=self.victim_mode())
        if slot is None:
            return None
        get = self.slots.get
        return slot, get(slot, w.PID), get(slot, w.TOKEN), get(slot, w.SESSION)

    def fault_kill_server(self) -> bool:
        assert self.server is not None
        found = self._holder_in_read()
        if found is None:
            return False
        slot, _pid, token, session = found
        self.server.kill()
        t = time.monotonic_ns()
        self.server.start()
        if not self.wait(lambda: self.newer_grant(token), self.cfg.fault_timeout):
            self.errors.append("kill-server: no grant after the restart within the timeout")
        self.record("kill-server", t, slot, token, session)
        return True

    def fault_failover(self) -> bool:
        group = self.sentinel
        assert group is not None, "failover needs the redis-sentinel backend"
        found = self._holder_in_read()
        if found is None:
            return False
        slot, _pid, token, session = found
        old = group.current_master()
        old.kill()
        t = time.monotonic_ns()
        self._after_failover("failover", lambda: group.wait_for_failover(old, 30), token)
        self.record("failover", t, slot, token, session)
        if self.injected + 1 < self.cfg.injections:  # another one comes: a replica again
            old.start()
            self._guarded("failover", lambda: group.wait_ready(60))
        return True

    def fault_cluster_failover(self) -> bool:
        cluster = self.cluster
        assert cluster is not None, "cluster-failover needs the redis-cluster backend"
        found = self._holder_in_read()
        if found is None:
            return False
        slot, _pid, token, session = found
        old = cluster.master_of(f"{self.namespace}:{{{self.kind}/{LOCK_NAME}}}:holder")
        old.kill()
        t = time.monotonic_ns()
        self._after_failover("cluster-failover", lambda: cluster.wait_for_failover(old, 30), token)
        self.record("cluster-failover", t, slot, token, session)
        if self.injected + 1 < self.cfg.injections:  # back as the new master's replica
            old.start()
            self._guarded("cluster-failover", lambda: cluster.wait_replicas(60))
        return True

    def _guarded(self, kind: str, wait: Callable[[], object]) -> bool:
        try:
            wait()
        except (TimeoutError, AssertionError) as exc:
            self.errors.append(f"{kind}: {exc}")
            return False
        return True

    def _after_failover(self, kind: str, promoted: Callable[[], object], token: int) -> None:
        if self._guarded(kind, promoted) and not self.wait(
            lambda: self.newer_grant(token), self.cfg.fault_timeout
        ):
            self.errors.append(f"{kind}: no grant after the failover within the timeout")

    def fault_pause_server(self) -> bool:
        assert self.server is not None
        found = self._holder_in_read()
        if found is None:
            return False
        slot, _pid, token, session = found
        lost = self.slots.get(slot, w.LOST) + self.slots.get(slot, w.SESSION_LOST)
        self.server.pause()
        t = time.monotonic_ns()
        try:

            def noticed() -> bool:  # the tenure's lost, or its session's (release in flight)
                return self.slots.get(slot, w.LOST) + self.slots.get(slot, w.SESSION_LOST) > lost

            if not self.wait(noticed, self.cfg.fault_timeout):
                self.errors.append("pause-server: the holder's lost did not fire")
        finally:
            self.server.resume()
        self.record("pause-server", t, slot, token, session)
        if not self.wait(lambda: self.newer_grant(token), self.cfg.fault_timeout):
            self.errors.append("pause-server: no grant after the resume within the timeout")
        return True

    def fault_cut_off_holder(self) -> bool:
        found = self._holder_in_read()
        if found is None:
            return False
        slot, pid, token, session = found
        lost = self.slots.get(slot, w.LOST) + self.slots.get(slot, w.SESSION_LOST)
        self.proxies[slot].blackhole()
        t = time.monotonic_ns()
        try:
            self.cross_check(pid)

            def lost_and_replaced() -> bool:
                noticed = self.slots.get(slot, w.LOST) + self.slots.get(slot, w.SESSION_LOST)
                return noticed > lost and self.conflicting_grant(token, slot)

            if not self.wait(lost_and_replaced, self.cfg.fault_timeout):
                self.errors.append("cut-off-holder: not lost and replaced within the timeout")
        finally:
            self.proxies[slot].heal()
        self.record("cut-off-holder", t, slot, token, session)
        return True

    def fault_cut_off_waiter(self) -> bool:
        holder = self.find({w.READ}, self.cfg.fault_timeout)
        # A waiter still queued in a session lost to an earlier injection has nothing to lose.
        slot = self.find(
            {w.ACQUIRING},
            self.cfg.fault_timeout,
            exclude=-1 if holder is None else holder,
            in_live_session=True,
        )
        if slot is None:
            return False
        lost, session = self.slots.get(slot, w.SESSION_LOST), self.slots.get(slot, w.SESSION)
        self.proxies[slot].blackhole()
        t = time.monotonic_ns()
        try:
            if not self.wait(
                lambda: self.slots.get(slot, w.SESSION_LOST) > lost, self.cfg.fault_timeout
            ):
                self.errors.append("cut-off-waiter: its session was not lost within the timeout")
        finally:
            self.proxies[slot].heal()
        self.record("cut-off-waiter", t, slot, 0, session)
        return True

    def fault_drop_acquire_reply(self) -> bool:
        slot = self.find({w.ACQUIRING}, self.cfg.fault_timeout)
        if slot is None:
            return False
        grants, lost = self.slots.get(slot, w.GRANTS), self.slots.get(slot, w.SESSION_LOST)
        session = self.slots.get(slot, w.SESSION)
        self.proxies[slot].drop_next_reply(sever=self.cfg.backend in SEVER_ON_DROP)
        t = time.monotonic_ns()
        try:

            def done() -> bool:
                return (
                    self.slots.get(slot, w.GRANTS) > grants
                    or self.slots.get(slot, w.SESSION_LOST) > lost
                )

            if not self.wait(done, self.cfg.fault_timeout):
                self.errors.append("drop-acquire-reply: the client was never granted")
        finally:
            self.proxies[slot].heal()
        self.record("drop-acquire-reply", t, slot, 0, session)
        return True

    def fault_drop_release_reply(self) -> bool:
        found = self._holder_in_read()
        if found is None:
            return False
        slot, pid, token, session = found
        self.proxies[slot].drop_next_reply(sever=self.cfg.backend in SEVER_ON_DROP)
        t = time.monotonic_ns()
        try:
            self.cross_check(pid)

            def handed_over() -> bool:
                released = self.slots.get(slot, w.PHASE) in (w.IDLE, w.ACQUIRING, w.STOPPED)
                return released and self.newer_grant(token)

            if not self.wait(handed_over, self.cfg.fault_timeout):
                self.errors.append("drop-release-reply: no handover within the timeout")
        finally:
            self.proxies[slot].heal()
        self.record("drop-release-reply", t, slot, token, session)
        return True

    # -- the run ------------------------------------------------------------------

    def execute(self) -> None:
        cfg = self.cfg
        for slot in range(cfg.workers):
            self.start(slot)
        ready = self.wait(
            lambda: all(self.slots.get(s, w.PHASE) != w.STARTING for s in range(cfg.workers)),
            60,
        )
        if not ready:
            self.errors.append("clients did not start within 60 s")
            return
        end = time.monotonic() + cfg.duration
        next_fault = time.monotonic() + cfg.gap
        done, settled_at = 0, -1
        for _ in range(10_000_000):  # bounded; the real bounds are the duration and the counts
            now = time.monotonic()
            grants = self.grants()
            if now >= end or grants >= cfg.max_acquisitions:
                break
            if settled_at >= 0 and grants >= settled_at:
                break
            self.reap()
            if cfg.fault != "none" and done < cfg.injections and now >= next_fault:
                self.inject()
                done += 1
                next_fault = time.monotonic() + cfg.gap
                if done == cfg.injections and cfg.settle:
                    settled_at = self.grants() + cfg.settle
            time.sleep(0.005)  # the controller's polling interval

    def stop(self) -> None:
        self.slots.stop()
        grace = 3 * self.cfg.ttl + 2 + 15  # an acquire in progress, then a release's retries
        deadline = time.monotonic() + grace
        for slot, proc in self.procs.items():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.exitcode is None:
                self.errors.append(f"client {self.client_of(slot)} did not stop; killed")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid or 0, signal.SIGCONT)
                proc.kill()
                proc.join(10)
        with contextlib.suppress(TenureError):
            self.inspect.close()
        for proxy in self.proxies:
            proxy.close()
        for master in self.masters:
            master.close()
        for group in (self.sentinel, self.cluster):
            if group is not None:
                group.close()

    def result(self, elapsed: float) -> RunResult:
        events = load_events(self.dir)
        fenced, unfenced = Store(self.dir, fenced=True), Store(self.dir, fenced=False)
        report = check(
            events,
            fenced.history(),
            fenced.final(),
            unfenced.history(),
            unfenced.final(),
            self.faults,
            self.deaths,
            limit=self.cfg.limit if self.kind == "semaphore" else 0,
            pool=self.pool.history(),
        )
        return RunResult(
            self.cfg,
            report,
            self.faults,
            elapsed,
            self.dir,
            self.skipped,
            self.notes,
            self.errors,
        )


def stopped(pid: int) -> bool:
    """True once the process is in the stopped state (``T`` in ``/proc/<pid>/stat``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "T"


def load_events(directory: Path) -> list[Event]:
    """Every client's events; a line cut short by a SIGKILL is skipped."""
    events: list[Event] = []
    for path in sorted(directory.glob("events-*.jsonl")):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                events.append(Event.from_json(line))
    return sorted(events, key=lambda e: e.t)


def run(
    config: RunConfig,
    directory: Path,
    server: ServerProcess | ZooKeeperEnsemble | None = None,
) -> RunResult:
    """One bounded run of ``config.fault`` against ``config.backend``; the histories checked."""
    if config.fault not in faults_of(config.backend, config.primitive):
        raise ValueError(
            f"{config.fault!r} does not apply to {config.primitive} on {config.backend}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    the_run = _Run(config, directory, server)
    try:
        the_run.execute()
    finally:
        the_run.stop()
    return the_run.result(time.monotonic() - started)
