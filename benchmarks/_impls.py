"""The lock libraries under test, behind one tiny interface, and the raw floors.

A :class:`Library` makes a :class:`BenchClient` for a :class:`Target` (a running server or a
directory) inside the measuring process; the client makes a :class:`BenchLock` per name. Adapters
keep each library at its documented defaults unless the label says otherwise. Imports happen
lazily so that a missing peer is skipped, not fatal.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import math
import os
import struct
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "AsyncBenchClient",
    "AsyncBenchLock",
    "AsyncFloorOp",
    "AsyncTenureClient",
    "BenchClient",
    "BenchLock",
    "FanOutFloorClient",
    "FloorOp",
    "Library",
    "PotteryMastersClient",
    "PythonEtcd3Client",
    "RedisCommandStats",
    "Target",
    "count_redis_requests",
    "delta",
    "etcd_afloor",
    "file_floor",
    "postgres_afloor",
    "postgres_floor",
    "redis_afloor",
    "redis_floor",
    "redlock_afloor",
    "redlock_floor",
    "zookeeper_floor",
]

LOCK_TTL = 30  # seconds, for every library that takes an expiry


@dataclass(frozen=True)
class Target:
    """Where the locks live: tenure's URL plus what the peers need."""

    backend: str
    url: str
    host: str = ""
    port: int = 0
    directory: str = ""
    masters: tuple[tuple[str, int], ...] = ()  # Redlock: every master (host, port)


class BenchLock(Protocol):
    def acquire(self, timeout: float) -> bool: ...

    def release(self) -> None: ...


class BenchClient(Protocol):
    def lock(self, name: str) -> BenchLock: ...

    def close(self) -> None: ...


# An asyncio library: made inside the running event loop, connected by ``open()``; every call is
# awaited in that one loop (the workers run their whole loop inside ``asyncio.run``).


class AsyncBenchLock(Protocol):
    async def acquire(self, timeout: float) -> bool: ...

    async def release(self) -> None: ...


class AsyncBenchClient(Protocol):
    async def open(self) -> None: ...

    def lock(self, name: str) -> AsyncBenchLock: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Library:
    key: str
    label: str
    make: Callable[[Target], Any]  # a BenchClient, or an AsyncBenchClient when is_async
    requires: tuple[str, ...] = ()
    note: str = ""
    is_tenure: bool = False
    uncontended_only: bool = False  # a diagnostic, not a lock to contend on
    extra: dict[str, Any] = field(default_factory=dict)
    is_async: bool = False  # measured inside one running event loop (see AsyncBenchClient)
    twin: str = ""  # the sync library this asyncio row is compared with (its key)

    def client(self, target: Target) -> BenchClient:
        if self.is_async:
            raise TypeError(f"{self.label} is an asyncio library: use async_client()")
        client: BenchClient = self.make(target)
        return client

    def async_client(self, target: Target) -> AsyncBenchClient:
        if not self.is_async:
            raise TypeError(f"{self.label} is not an asyncio library: use client()")
        client: AsyncBenchClient = self.make(target)
        return client

    def missing(self) -> list[str]:
        gone = []
        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError:
                gone.append(module)
        return gone


# tenure.


class _TenureLock:
    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def acquire(self, timeout: float) -> bool:
        return bool(self._lock.acquire(timeout=timeout))

    def release(self) -> None:
        self._lock.release()


class TenureClient:
    def __init__(self, target: Target) -> None:
        import tenure

        self._client = tenure.connect(target.url, ttl=LOCK_TTL)

    def lock(self, name: str) -> BenchLock:
        return _TenureLock(self._client.lock(name))

    def close(self) -> None:
        self._client.close()


# tenure.aio: the same client, asyncio flavour (made and awaited inside the running loop).


class _AsyncTenureLock:
    def __init__(self, lock: Any) -> None:
        self._lock = lock

    async def acquire(self, timeout: float) -> bool:
        return bool(await self._lock.acquire(timeout=timeout))

    async def release(self) -> None:
        await self._lock.release()


class AsyncTenureClient:
    def __init__(self, target: Target) -> None:
        from tenure import aio

        self._client = aio.connect(target.url, ttl=LOCK_TTL)

    async def open(self) -> None:
        await self._client.open()

    def lock(self, name: str) -> AsyncBenchLock:
        return _AsyncTenureLock(self._client.lock(name))

    async def close(self) -> None:
        await self._client.close()


# Diagnostic: tenure's own Lua scripts called with bare redis-py, without tenure's Python layers
# (same keys and arguments as the driver sends). Uncontended only: it splits tenure's distance to
# the floor into "what the scripts cost" and "what tenure's Python costs".


class _ScriptsLock:
    def __init__(self, client: Any, scripts: tuple[Any, Any], namespace: str, name: str) -> None:
        import json
        import socket

        from tenure._sync.backends._redis_common import mode_args, prefix
        from tenure._sync.backends.base import EXCLUSIVE

        self._acquire_script, self._release_script = scripts
        self._keys = [prefix(namespace, f"lock/{name}") + "holder"]
        self._owner = uuid.uuid4().hex
        meta = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "value": None})
        self._args = [self._owner, LOCK_TTL * 1000, meta, "q", *mode_args(EXCLUSIVE)]

    def acquire(self, timeout: float) -> bool:
        granted, _token, _at = self._acquire_script(keys=self._keys, args=self._args)
        return bool(granted)

    def release(self) -> None:
        self._release_script(keys=self._keys, args=[self._owner, ""])


class TenureScriptsClient:
    def __init__(self, target: Target) -> None:
        import redis

        from tenure import _redis_lua

        self._redis = redis.Redis(host=target.host, port=target.port, decode_responses=True)
        self._scripts = (
            self._redis.register_script(_redis_lua.ACQUIRE),
            self._redis.register_script(_redis_lua.RELEASE),
        )

    def lock(self, name: str) -> BenchLock:
        return _ScriptsLock(self._redis, self._scripts, "bench-scripts", name)

    def close(self) -> None:
        self._redis.close()


# redis-py's Lock (SET NX + sleep-polling).


class _RedisPyLock:
    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def acquire(self, timeout: float) -> bool:
        return bool(self._lock.acquire(blocking=True, blocking_timeout=timeout))

    def release(self) -> None:
        self._lock.release()


class RedisPyClient:
    def __init__(self, target: Target, sleep: float) -> None:
        import redis

        self._redis = redis.Redis(host=target.host, port=target.port)
        self._sleep = sleep

    def lock(self, name: str) -> BenchLock:
        return _RedisPyLock(self._redis.lock(name, timeout=LOCK_TTL, sleep=self._sleep))

    def close(self) -> None:
        self._redis.close()


# python-redis-lock (SET NX + BLPOP on one shared signal list).


class _PythonRedisLock:
    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def acquire(self, timeout: float) -> bool:
        # Its timeout is a whole number of seconds.
        return bool(self._lock.acquire(blocking=True, timeout=max(1, round(timeout))))

    def release(self) -> None:
        self._lock.release()


class PythonRedisLockClient:
    def __init__(self, target: Target) -> None:
        import redis

        self._redis = redis.Redis(host=target.host, port=target.port)

    def lock(self, name: str) -> BenchLock:
        import redis_lock

        return _PythonRedisLock(redis_lock.Lock(self._redis, name, expire=LOCK_TTL))

    def close(self) -> None:
        self._redis.close()


# pottery's Redlock, one master.


class _PotteryLock:
    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def acquire(self, timeout: float) -> bool:
        return bool(self._lock.acquire(blocking=True, timeout=timeout))

    def release(self) -> None:
        self._lock.release()


class PotteryClient:
    def __init__(self, target: Target) -> None:
        import redis

        self._redis = redis.Redis(host=target.host, port=target.port)

    def lock(self, name: str) -> BenchLock:
        from pottery import Redlock

        return _PotteryLock(
            Redlock(key=name, masters={self._redis}, auto_release_time=float(LOCK_TTL))
        )

    def close(self) -> None:
        self._redis.close()


# tooz's redis driver (redis-py's Lock underneath, at its defaults).


class _SecondsLock:
    """A lock whose ``acquire`` takes the seconds to wait as its first argument: tooz's
    (``blocking=``) and python-etcd3's (``timeout=``)."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def acquire(self, timeout: float) -> bool:
        return bool(self._lock.acquire(timeout))

    def release(self) -> None:
        self._lock.release()


class ToozClient:
    def __init__(self, target: Target) -> None:
        from tooz import coordination

        self._coord = coordination.get_coordinator(
            f"redis://{target.host}:{target.port}", uuid.uuid4().hex.encode()
        )
        self._coord.start()

    def lock(self, name: str) -> BenchLock:
        return _SecondsLock(self._coord.get_lock(name.encode()))

    def close(self) -> None:
        self._coord.stop()


class ToozPostgresClient(ToozClient):
    def __init__(self, target: Target) -> None:
        from tooz import coordination

        self._coord = coordination.get_coordinator(
            f"postgresql://postgres@{target.host}:{target.port}/postgres",
            uuid.uuid4().hex.encode(),
        )
        self._coord.start()


# Plain PostgreSQL session-level advisory locks with psycopg: what users write by hand (no
# lease, no token, no holder records), the timeout as lock_timeout.


class _PgAdvisoryLock:
    def __init__(self, conn: Any, key: int, *, shared: bool = False) -> None:
        self._conn = conn
        self._key = key
        self._timeout_ms = -1
        suffix = "_shared" if shared else ""  # readers: the shared mode of the same key
        self._lock_sql = f"SELECT pg_advisory_lock{suffix}(%s)"
        self._unlock_sql = f"SELECT pg_advisory_unlock{suffix}(%s)"

    def acquire(self, timeout: float) -> bool:
        import psycopg

        ms = max(1, int(timeout * 1000))
        if ms != self._timeout_ms:
            self._conn.execute(f"SET lock_timeout = {ms}")
            self._timeout_ms = ms
        try:
            self._conn.execute(self._lock_sql, (self._key,))
        except psycopg.errors.LockNotAvailable:
            return False
        return True

    def release(self) -> None:
        self._conn.execute(self._unlock_sql, (self._key,))


class PgAdvisoryClient:
    def __init__(self, target: Target) -> None:
        import psycopg

        self._conn = psycopg.connect(
            f"postgresql://postgres@{target.host}:{target.port}/postgres",
            autocommit=True,
            prepare_threshold=0,
        )

    def lock(self, name: str) -> BenchLock:
        return self._advisory(name, shared=False)

    def _advisory(self, name: str, *, shared: bool) -> BenchLock:
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        key = int.from_bytes(digest, "big", signed=True)
        return _PgAdvisoryLock(self._conn, key, shared=shared)

    def close(self) -> None:
        self._conn.close()


# fasteners' InterProcessLock (fcntl, polling with back-off), for the file backend.


class _FastenersLock:
    def __init__(self, path: str) -> None:
        import fasteners

        self._lock = fasteners.InterProcessLock(path)

    def acquire(self, timeout: float) -> bool:
        return bool(self._lock.acquire(blocking=True, timeout=timeout))

    def release(self) -> None:
        self._lock.release()


class _LockFileClient:
    """A file-lock library's client: one lock file per name in its own directory."""

    subdir: str
    make: Callable[[str], BenchLock]

    def __init__(self, target: Target) -> None:
        self._dir = os.path.join(target.directory, self.subdir)
        os.makedirs(self._dir, exist_ok=True)

    def lock(self, name: str) -> BenchLock:
        return type(self).make(os.path.join(self._dir, name + ".lock"))

    def close(self) -> None:
        return None


class FastenersClient(_LockFileClient):
    subdir, make = "fasteners", _FastenersLock


class _FileLockLock:
    def __init__(self, path: str) -> None:
        import filelock

        self._lock = filelock.FileLock(path)
        self._timeout = filelock.Timeout

    def acquire(self, timeout: float) -> bool:
        try:
            self._lock.acquire(timeout=timeout)
        except self._timeout:
            return False
        return True

    def release(self) -> None:
        self._lock.release()


class _PortalockerLock:
    def __init__(self, path: str) -> None:
        import portalocker

        self._lock = portalocker.Lock(path, fail_when_locked=False)
        self._timeout = portalocker.exceptions.LockException

    def acquire(self, timeout: float) -> bool:
        try:
            self._lock.acquire(timeout=timeout)
        except self._timeout:
            return False
        return True

    def release(self) -> None:
        self._lock.release()


class FileLockClient(_LockFileClient):
    """filelock's FileLock (fcntl, polls every 50 ms by default)."""

    subdir, make = "filelock", _FileLockLock


class PortalockerClient(_LockFileClient):
    """portalocker's Lock (flock, polls every 250 ms by default)."""

    subdir, make = "portalocker", _PortalockerLock


# Floors: the minimal work any lock on this backend must do, with the same client library. A
# floor is an operation factory, so that it can be timed interleaved with a library's
# acquire + release in the same process (both then see the same CPU placement).

FloorOp = tuple[Callable[[], object], Callable[[], None]]
# The asyncio floors: made inside the running loop (``await floor(target)``), each operation
# awaited in it, as the asyncio library rows are.
AsyncFloorOp = tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]


# Diagnostic: the Redlock fan-out floor (issue #26): two rounds of one PING written to every
# master before any reply is read, on one kept connection per master. Uncontended only.


class _FanOutLock:
    def __init__(self, conns: list[Any]) -> None:
        self._conns = conns

    def _round(self) -> None:
        for conn in self._conns:
            conn.send_command("PING")
        for conn in self._conns:
            conn.read_response()

    def acquire(self, timeout: float) -> bool:
        self._round()
        return True

    def release(self) -> None:
        self._round()


class FanOutFloorClient:
    """Not a lock: what any Redlock acquire + release on these masters cannot beat."""

    def __init__(self, target: Target) -> None:
        import redis

        self._clients = [redis.Redis(host=h, port=p) for h, p in target.masters]
        self._conns = [c.connection_pool.get_connection() for c in self._clients]

    def lock(self, name: str) -> BenchLock:
        return _FanOutLock(self._conns)

    def close(self) -> None:
        for client, conn in zip(self._clients, self._conns, strict=True):
            client.connection_pool.release(conn)
            client.close()


# pottery's Redlock on every master of a Redlock target.


class PotteryMastersClient:
    def __init__(self, target: Target) -> None:
        import redis

        self._masters = {redis.Redis(host=h, port=p) for h, p in target.masters}

    def lock(self, name: str) -> BenchLock:
        from pottery import Redlock

        return _PotteryLock(
            Redlock(key=name, masters=self._masters, auto_release_time=float(LOCK_TTL))
        )

    def close(self) -> None:
        for master in self._masters:
            master.close()


def redlock_floor(target: Target) -> FloorOp:
    """tenure's acquire + release on ONE of the masters (redis://): the single-instance lock
    that Redlock's 5-master acquire + release is compared with (issue #7: within 1.5x)."""
    import tenure

    host, port = target.masters[0]
    client = tenure.connect(f"redis://{host}:{port}/0?namespace=bench-single", ttl=LOCK_TTL)
    lock = client.lock("floor")

    def acquire_release() -> None:
        lock.acquire()
        lock.release()

    return acquire_release, client.close


def redis_floor(target: Target) -> FloorOp:
    """Two PING round trips with redis-py: what a lock's acquire + release cannot beat."""
    import redis

    client = redis.Redis(host=target.host, port=target.port)

    def two_pings() -> None:
        client.ping()
        client.ping()

    return two_pings, client.close


async def redlock_afloor(target: Target) -> AsyncFloorOp:
    """tenure.aio's acquire + release on ONE of the masters: :func:`redlock_floor`, asyncio."""
    from tenure import aio

    host, port = target.masters[0]
    client = await aio.connect(f"redis://{host}:{port}/0?namespace=bench-single", ttl=LOCK_TTL)
    lock = client.lock("afloor")

    async def acquire_release() -> None:
        await lock.acquire()
        await lock.release()

    return acquire_release, client.close


async def redis_afloor(target: Target) -> AsyncFloorOp:
    """Two PING round trips with ``redis.asyncio`` on one connection."""
    import redis.asyncio

    client = redis.asyncio.Redis(host=target.host, port=target.port)

    async def two_pings() -> None:
        await client.ping()
        await client.ping()

    return two_pings, client.aclose


async def postgres_afloor(target: Target) -> AsyncFloorOp:
    """Two ``SELECT 1`` with psycopg's ``AsyncConnection`` (autocommit, prepared)."""
    import psycopg

    conn = await psycopg.AsyncConnection.connect(
        f"postgresql://postgres@{target.host}:{target.port}/postgres",
        autocommit=True,
        prepare_threshold=0,
    )

    async def two_selects() -> None:
        await (await conn.execute("SELECT 1")).fetchone()
        await (await conn.execute("SELECT 1")).fetchone()

    return two_selects, conn.close


def postgres_floor(target: Target) -> FloorOp:
    """Two ``SELECT 1`` round trips with psycopg on one connection (prepared, as tenure's are)."""
    import psycopg

    conn = psycopg.connect(
        f"postgresql://postgres@{target.host}:{target.port}/postgres",
        autocommit=True,
        prepare_threshold=0,
    )

    def two_selects() -> None:
        conn.execute("SELECT 1").fetchone()
        conn.execute("SELECT 1").fetchone()

    return two_selects, conn.close


_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", fcntl.F_SETLK)
_FLOCK = "hhqqi4x"  # struct flock on 64-bit Linux: type, whence, start, len, pid


def file_floor(target: Target) -> FloorOp:
    """open + fcntl write lock + unlock + close of one file: the syscalls of a file lock."""
    path = os.path.join(target.directory, "floor.lock")
    lock = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    unlock = struct.pack(_FLOCK, fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0)

    def lock_unlock() -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.fcntl(fd, _OFD_SETLK, lock)
            fcntl.fcntl(fd, _OFD_SETLK, unlock)
        finally:
            os.close(fd)

    return lock_unlock, lambda: None


def count_redis_requests() -> Callable[[], int]:
    """Count requests sent by redis-py in this process (a pipeline is one); returns a reader.

    Patches ``AbstractConnection.send_packed_command`` (sync and ``redis.asyncio``), which every
    command, pipeline and connection handshake through redis-py goes through, and the sends of
    tenure's kept connections, which write to the socket themselves (``tenure._resp.send``;
    asyncio: ``_Replies.send``): a request is a round trip (BLPOP included).
    """
    try:
        from redis.asyncio.connection import AbstractConnection as AsyncConnection
        from redis.connection import AbstractConnection
    except ImportError:
        return lambda: 0
    sent = [0]
    original = AbstractConnection.send_packed_command
    aoriginal = AsyncConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        original(self, command, check_health)

    async def acounted(self: Any, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        await aoriginal(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    AsyncConnection.send_packed_command = acounted  # type: ignore[method-assign]
    _count_tenure_sends(sent)
    return lambda: sent[0]


def _count_tenure_sends(sent: list[int]) -> None:
    """Count the requests tenure's kept Redis connections write themselves (none if this tenure
    has no such path: an older tree run through ``PYTHONPATH``)."""
    try:
        from tenure import _resp
        from tenure._async.backends import _redis_common
    except ImportError:
        return
    send = getattr(_resp, "send", None)
    if send is not None:

        def counted_send(conn: Any, command: bytes) -> None:
            sent[0] += 1
            send(conn, command)

        _resp.send = counted_send  # type: ignore[attr-defined]
    replies = getattr(_redis_common, "_Replies", None)
    if replies is not None:
        asend = replies.send

        def counted_asend(self: Any, command: bytes) -> None:
            sent[0] += 1
            asend(self, command)

        replies.send = counted_asend


class RedisCommandStats:
    """Calls per command from ``INFO commandstats`` on one long-lived connection.

    The connection is opened once (its handshake is not counted between snapshots) and our own
    ``INFO`` calls are left out.
    """

    def __init__(self, target: Target) -> None:
        import redis

        self._client = redis.Redis(host=target.host, port=target.port)

    def __call__(self) -> dict[str, int]:
        raw = self._client.info("commandstats")
        stats: dict[str, int] = {}
        for key, value in raw.items():
            name = key.removeprefix("cmdstat_")
            if name != "info" and isinstance(value, dict):
                stats[name] = int(value.get("calls", 0))
        return stats

    def cpu_seconds(self) -> float:
        """The server's user + system CPU time so far (``INFO cpu``)."""
        raw = self._client.info("cpu")
        return float(raw["used_cpu_user"]) + float(raw["used_cpu_sys"])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Per-command calls between two snapshots (only the commands that moved)."""
    moved = {name: after[name] - before.get(name, 0) for name in after}
    return {name: calls for name, calls in sorted(moved.items()) if calls}


# ZooKeeper: kazoo's own Lock recipe, tooz on kazoo, and the floor (create + delete with kazoo).


def _kazoo(target: Target) -> Any:
    from kazoo.client import KazooClient

    client = KazooClient(hosts=f"{target.host}:{target.port}", timeout=LOCK_TTL)
    client.start(10)
    return client


class _KazooLock:
    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def acquire(self, timeout: float) -> bool:
        return bool(self._lock.acquire(timeout=timeout))

    def release(self) -> None:
        self._lock.release()


class KazooLockClient:
    """kazoo's ``Lock`` recipe (ephemeral sequential nodes, predecessor watch)."""

    def __init__(self, target: Target) -> None:
        self._client = _kazoo(target)
        self._id = uuid.uuid4().hex

    def lock(self, name: str) -> BenchLock:
        return _KazooLock(self._client.Lock(f"/bench-kazoo/{name}", self._id))

    def close(self) -> None:
        self._client.stop()
        self._client.close()


class ToozZooKeeperClient:
    """tooz's ``kazoo://`` driver (kazoo's Lock recipe underneath)."""

    def __init__(self, target: Target) -> None:
        from tooz import coordination

        self._coord = coordination.get_coordinator(
            f"kazoo://{target.host}:{target.port}?timeout={LOCK_TTL}", uuid.uuid4().hex.encode()
        )
        self._coord.start()

    def lock(self, name: str) -> BenchLock:
        return _SecondsLock(self._coord.get_lock(name.encode()))

    def close(self) -> None:
        self._coord.stop()


# etcd: the floor (one Txn + one DeleteRange with tenure's own stubs over grpc, as the issue
# defines it), tooz's etcd3+http driver (etcd's JSON gateway), and the server's own counters.


def _etcd_floor_requests(prefix: bytes) -> tuple[Any, Any]:
    """The etcd floors' two requests on a fresh key: create it if absent (Txn), delete it."""
    from tenure._etcdpb import rpc_pb2 as pb

    key = prefix + uuid.uuid4().hex.encode()
    create = pb.TxnRequest(
        compare=[
            pb.Compare(
                key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=0
            )
        ],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"x"))],
    )
    return create, pb.DeleteRangeRequest(key=key)


def etcd_floor(target: Target) -> FloorOp:
    """One Txn (create a key if absent) + one DeleteRange, with tenure's stubs over grpc."""
    import grpc

    from tenure._etcdpb import rpc_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(f"{target.host}:{target.port}")
    kv = pb_grpc.KVStub(channel)
    create, delete = _etcd_floor_requests(b"bench-floor/")

    def txn_and_delete() -> None:
        kv.Txn(create, timeout=5)
        kv.DeleteRange(delete, timeout=5)

    return txn_and_delete, channel.close


class ToozEtcdClient:
    """tooz's ``etcd3+http`` driver (etcd3gw, the JSON gateway): lease + Txn, polls to wait."""

    def __init__(self, target: Target) -> None:
        from tooz import coordination

        self._coord = coordination.get_coordinator(
            f"etcd3+http://{target.host}:{target.port}", uuid.uuid4().hex.encode()
        )
        self._coord.start()

    def lock(self, name: str) -> BenchLock:
        return _SecondsLock(self._coord.get_lock(name.encode()))

    def close(self) -> None:
        self._coord.stop()


class PythonEtcd3Client:
    """python-etcd3's ``Lock`` (etcd3 0.12.0, its generated protobuf modules rebuilt in memory for
    today's protobuf, ``benchmarks/_etcd3.py``): lease + Txn per try, ``watch_once`` to wait."""

    def __init__(self, target: Target) -> None:
        from benchmarks._etcd3 import etcd3

        self._client = etcd3.client(host=target.host, port=target.port)

    def lock(self, name: str) -> BenchLock:
        return _SecondsLock(self._client.lock(name, ttl=LOCK_TTL))

    def close(self) -> None:
        self._client.close()


async def etcd_afloor(target: Target) -> AsyncFloorOp:
    """:func:`etcd_floor` with ``grpc.aio`` (the same stubs serve both, as in tenure)."""
    import grpc

    from tenure._etcdpb import rpc_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(f"{target.host}:{target.port}")
    kv = pb_grpc.KVStub(channel)
    create, delete = _etcd_floor_requests(b"bench-afloor/")

    async def txn_and_delete() -> None:
        await kv.Txn(create, timeout=5)
        await kv.DeleteRange(delete, timeout=5)

    async def close() -> None:
        await channel.close()

    return txn_and_delete, close


def zookeeper_floor(target: Target) -> FloorOp:
    """Create + delete of one ephemeral node with kazoo: two writes, what a lock cannot beat."""
    client = _kazoo(target)
    client.ensure_path("/bench-floor")

    def create_delete() -> None:
        client.delete(client.create("/bench-floor/node", ephemeral=True))

    def close() -> None:
        client.stop()
        client.close()

    return create_delete, close


class EtcdServerStats:
    """Requests per gRPC method from etcd's ``/metrics`` (unary calls handled, stream messages
    received), and the server's CPU time; same interface as :class:`RedisCommandStats`."""

    def __init__(self, target: Target) -> None:
        self._url = f"http://{target.host}:{target.port}/metrics"

    def _text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(self._url, timeout=5) as reply:
            return str(reply.read().decode())

    def __call__(self) -> dict[str, int]:
        import re

        stats: dict[str, int] = {}
        text = self._text()
        for name, kind in (
            ("grpc_server_handled_total", "unary"),
            ("grpc_server_msg_received_total", "bidi_stream"),
        ):
            pattern = (
                rf'^{name}\{{[^}}]*grpc_method="(\w+)"[^}}]*grpc_type="{kind}"[^}}]*\}} (\S+)$'
            )
            for method, value in re.findall(pattern, text, re.M):
                stats[method] = stats.get(method, 0) + int(float(value))
        return stats

    def cpu_seconds(self) -> float:
        import re

        found = re.search(r"^process_cpu_seconds_total (\S+)$", self._text(), re.M)
        return float(found.group(1)) if found else math.nan

    def close(self) -> None:
        return None
