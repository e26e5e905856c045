"""The backends table: how to start one, its floor, tenure's URL, and the peers on it.

Adding etcd, ZooKeeper or PostgreSQL is one more :class:`Backend` entry: a ``start`` that returns
a :class:`Target` (from ``tests.servers``), a floor function with the same client library tenure
uses (etcd: Txn + DeleteRange over grpc; ZooKeeper: create + delete with kazoo; PostgreSQL:
2 x SELECT 1 with psycopg), and the peers' adapters in ``_impls``. Every backend also lists
``tenure aio`` (``tenure.aio``, measured inside one event loop per process) with, where the
client library has an asyncio flavour, its asyncio floor (``afloor``: redis.asyncio 2 x PING,
psycopg ``AsyncConnection`` 2 x SELECT 1, grpc.aio Txn + DeleteRange, tenure aio on one Redlock
master); ZooKeeper (kazoo has no asyncio client) and files compare it with the sync floor.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from benchmarks._env import filesystem_of
from benchmarks._impls import (
    AsyncFloorOp,
    AsyncTenureClient,
    EtcdServerStats,
    FanOutFloorClient,
    FastenersClient,
    FileLockClient,
    FloorOp,
    KazooLockClient,
    Library,
    PgAdvisoryClient,
    PortalockerClient,
    PotteryClient,
    PotteryMastersClient,
    PythonEtcd3Client,
    PythonRedisLockClient,
    RedisPyClient,
    Target,
    TenureClient,
    TenureScriptsClient,
    ToozClient,
    ToozEtcdClient,
    ToozPostgresClient,
    ToozZooKeeperClient,
    etcd_afloor,
    etcd_floor,
    file_floor,
    postgres_afloor,
    postgres_floor,
    redis_afloor,
    redis_floor,
    redlock_afloor,
    redlock_floor,
    zookeeper_floor,
)

__all__ = ["BACKENDS", "Backend", "Running"]

FloorFn = Callable[[Target], FloorOp]
AsyncFloorFn = Callable[[Target], Awaitable[AsyncFloorOp]]


@dataclass
class Running:
    """A started backend: where it is, how to stop it, facts for the report."""

    target: Target
    close: Callable[[], None]
    info: dict[str, Any] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Backend:
    name: str
    start: Callable[[], Running]
    floor: FloorFn
    floor_label: str
    libraries: tuple[Library, ...]
    commandstats: bool = False  # the server reports per-command call counts (Redis)
    renewal: bool = False  # measure a session renewing 1,000 locks
    wakeup: str = ""
    #: the per-request counters when commandstats is set (default: Redis' INFO commandstats)
    stats: Callable[[Target], Any] | None = None
    #: the asyncio floor the ``aio`` row is compared with; None: no asyncio client, the aio row
    #: is compared with the sync floor (``afloor_label`` says why)
    afloor: AsyncFloorFn | None = None
    afloor_label: str = ""


def _aio(requires: tuple[str, ...], note: str = "") -> Library:
    """tenure's asyncio flavour (``tenure.aio``), compared with its asyncio floor and its sync
    twin (the library keyed ``tenure``)."""
    return Library(
        "tenure-aio",
        "tenure aio (asyncio)",
        AsyncTenureClient,
        requires,
        note=note or "tenure.aio, one event loop per process",
        is_async=True,
        twin="tenure",
    )


def _start_redis() -> Running:
    from tests.servers import start_redis

    server = start_redis()
    target = Target(
        backend="redis",
        url=f"{server.url}?namespace=bench",
        host=server.host,
        port=server.port,
    )
    return Running(
        target=target,
        close=server.close,
        info={"endpoint": f"{server.host}:{server.port}", "persistence": "off"},
        pids=[server.pid] if server.pid else [],
    )


def _start_postgres() -> Running:
    from tests.servers import start_postgres

    server = start_postgres()
    target = Target(
        backend="postgres",
        url=f"{server.url}?namespace=bench",
        host=server.host,
        port=server.port,
    )
    return Running(
        target=target,
        close=server.close,
        info={"endpoint": f"{server.host}:{server.port}", "fsync": "off"},
        pids=[server.pid] if server.pid else [],
    )


def _start_zookeeper() -> Running:
    from tests.servers.zookeeper import start_zookeeper

    ensemble = start_zookeeper(1)
    node = ensemble.nodes[0]
    target = Target(
        backend="zookeeper",
        url=f"{ensemble.url}?namespace=bench",
        host="127.0.0.1",
        port=node.port,
    )
    return Running(
        target=target,
        close=ensemble.close,
        info={"endpoint": node.endpoint, "mode": "standalone", "forceSync": "no"},
        pids=[node.pid] if node.pid else [],
    )


def _start_etcd() -> Running:
    from tests.servers import start_etcd_cluster

    cluster = start_etcd_cluster(1)
    node = cluster.nodes[0]
    target = Target(
        backend="etcd", url=f"{cluster.url}?namespace=bench", host=node.host, port=node.port
    )
    return Running(
        target=target,
        close=cluster.close,
        info={"endpoint": node.endpoint, "nodes": 1, "fsync": "on (etcd always fsyncs)"},
        pids=[node.pid] if node.pid else [],
    )


def _start_redlock() -> Running:
    from tests.servers import redlock_url, start_redis_masters

    masters = start_redis_masters(5)
    target = Target(
        backend="redlock",
        url=f"{redlock_url(masters)}?namespace=bench",
        host=masters[0].host,
        port=masters[0].port,
        masters=tuple((m.host, m.port) for m in masters),
    )

    def close() -> None:
        for master in masters:
            master.close()

    return Running(
        target=target,
        close=close,
        info={"masters": ", ".join(m.endpoint for m in masters), "persistence": "off"},
        pids=[m.pid for m in masters if m.pid],
    )


def _start_redis_sentinel() -> Running:
    from tests.servers.redis import start_redis_sentinel

    group = start_redis_sentinel(replicas=1, sentinels=3)
    master = group.master
    target = Target(
        backend="redis-sentinel",
        url=f"{group.url}?namespace=bench",
        host=master.host,
        port=master.port,
    )
    return Running(
        target=target,
        close=group.close,
        info={
            "master": master.endpoint,
            "replicas": ", ".join(r.endpoint for r in group.replicas),
            "sentinels": ", ".join(s.endpoint for s in group.sentinels),
            "persistence": "off",
        },
        pids=[n.pid for n in group.data_nodes if n.pid],
    )


def _start_redis_cluster() -> Running:
    from tests.servers.redis import start_redis_cluster

    cluster = start_redis_cluster(3, 1)
    # The floor pings the master of the benchmark's lock names' slot (they share one: tenure's
    # keys carry a hash tag per name, and the names differ; the floor is per round trip anyway).
    first = cluster.masters()[0]
    target = Target(
        backend="redis-cluster",
        url=f"{cluster.url}&namespace=bench",
        host=first.host,
        port=first.port,
    )
    return Running(
        target=target,
        close=cluster.close,
        info={"nodes": "3 masters + 3 replicas", "persistence": "off"},
        pids=[n.pid for n in cluster.nodes if n.pid],
    )


def _tenure_on_master(target: Target) -> TenureClient:
    """tenure on the Sentinel group's master directly (redis://), the same server and replica:
    what following the sentinels costs on top."""
    return TenureClient(
        replace(target, url=f"redis://{target.host}:{target.port}/0?namespace=bench")
    )


def _start_file() -> Running:
    directory = tempfile.mkdtemp(prefix="tenure-bench-")
    return Running(
        target=Target(
            backend="file", url=f"file://{directory}?namespace=bench", directory=directory
        ),
        close=lambda: shutil.rmtree(directory, ignore_errors=True),
        info={"directory": directory, "filesystem": filesystem_of(directory)},
    )


BACKENDS: dict[str, Backend] = {
    "redis": Backend(
        name="redis",
        start=_start_redis,
        floor=redis_floor,
        floor_label="2 x PING (redis-py)",
        libraries=(
            Library(
                "tenure",
                "tenure",
                TenureClient,
                ("tenure", "redis"),
                is_tenure=True,
                note="FIFO queue, per-waiter BLPOP signal",
            ),
            _aio(("tenure", "redis")),
            Library(
                "tenure-scripts",
                "diagnostic: tenure's 2 Lua scripts via bare redis-py",
                TenureScriptsClient,
                ("tenure", "redis"),
                note="same EVALSHA calls and arguments, none of tenure's Python layers",
                uncontended_only=True,
            ),
            Library(
                "redis-py",
                "redis-py Lock (sleep 0.1 s, default)",
                lambda t: RedisPyClient(t, 0.1),
                ("redis",),
                note="SET NX, polls every 0.1 s",
            ),
            Library(
                "redis-py-1ms",
                "redis-py Lock (sleep 1 ms)",
                lambda t: RedisPyClient(t, 0.001),
                ("redis",),
                note="SET NX, polls every 1 ms",
            ),
            Library(
                "python-redis-lock",
                "python-redis-lock",
                PythonRedisLockClient,
                ("redis_lock",),
                note="SET NX + BLPOP on one shared signal list",
            ),
            Library(
                "pottery",
                "pottery Redlock (1 master)",
                PotteryClient,
                ("pottery",),
                note="retries after a random sleep of 0-200 ms",
            ),
            Library(
                "tooz",
                "tooz (redis)",
                ToozClient,
                ("tooz",),
                note="redis-py Lock underneath, default sleep",
            ),
        ),
        commandstats=True,
        renewal=True,
        wakeup="release pushes to the next waiter's own list (BLPOP)",
        afloor=redis_afloor,
        afloor_label="2 x PING (redis.asyncio)",
    ),
    "postgres": Backend(
        name="postgres",
        start=_start_postgres,
        floor=postgres_floor,
        floor_label="2 x SELECT 1 (psycopg, prepared)",
        libraries=(
            Library(
                "tenure",
                "tenure",
                TenureClient,
                ("tenure", "psycopg"),
                is_tenure=True,
                note="advisory lock + token + holder record, PostgreSQL's lock queue",
            ),
            _aio(("tenure", "psycopg")),
            Library(
                "pg-advisory",
                "plain pg_advisory_lock (psycopg)",
                PgAdvisoryClient,
                ("psycopg",),
                note="no lease, no token, no records; PostgreSQL's lock queue",
            ),
            Library(
                "tooz",
                "tooz (postgresql)",
                ToozPostgresClient,
                ("tooz", "psycopg2"),
                note="advisory locks via psycopg2",
            ),
        ),
        wakeup="PostgreSQL's lock queue (the backend wakes the next waiter)",
        afloor=postgres_afloor,
        afloor_label="2 x SELECT 1 (psycopg AsyncConnection, prepared)",
    ),
    "redis-sentinel": Backend(
        name="redis-sentinel",
        start=_start_redis_sentinel,
        floor=redis_floor,
        floor_label="2 x PING (redis-py) to the master",
        libraries=(
            Library(
                "tenure",
                "tenure (redis+sentinel://)",
                TenureClient,
                ("tenure", "redis"),
                is_tenure=True,
                note="master found through 3 sentinels; 1 replica",
            ),
            _aio(("tenure", "redis")),
            Library(
                "tenure-master",
                "tenure (redis:// to the same master)",
                _tenure_on_master,
                ("tenure", "redis"),
                note="the same master and replica, without Sentinel",
            ),
        ),
        wakeup="as redis://",
        afloor=redis_afloor,
        afloor_label="2 x PING (redis.asyncio) to the master",
    ),
    "redis-cluster": Backend(
        name="redis-cluster",
        start=_start_redis_cluster,
        floor=redis_floor,
        floor_label="2 x PING (redis-py) to one master",
        libraries=(
            Library(
                "tenure",
                "tenure (cluster=true)",
                TenureClient,
                ("tenure", "redis"),
                is_tenure=True,
                note="3 masters + 3 replicas; a connection per master",
            ),
            _aio(("tenure", "redis")),
        ),
        wakeup="as redis://",
        afloor=redis_afloor,
        afloor_label="2 x PING (redis.asyncio) to one master",
    ),
    "redlock": Backend(
        name="redlock",
        start=_start_redlock,
        floor=redlock_floor,
        floor_label="tenure redis:// on one of the masters (acquire + release)",
        libraries=(
            Library(
                "tenure",
                "tenure (5 masters)",
                TenureClient,
                ("tenure", "redis"),
                is_tenure=True,
                note="quorum 3, pipelined fan-out, wake-up via BLPOP on the first master",
            ),
            _aio(("tenure", "redis")),
            Library(
                "fan-out",
                "diagnostic: fan-out floor, 2 rounds of PING to every master",
                FanOutFloorClient,
                ("redis",),
                note="each round written to every master before any reply is read",
                uncontended_only=True,
            ),
            Library(
                "pottery",
                "pottery Redlock (5 masters)",
                PotteryMastersClient,
                ("pottery",),
                note="retries after a random sleep of 0-200 ms",
            ),
        ),
        wakeup="release pushes a wake-up to each master's oldest waiter (BLPOP on the first)",
        afloor=redlock_afloor,
        afloor_label="tenure aio redis:// on one of the masters (acquire + release)",
    ),
    "file": Backend(
        name="file",
        start=_start_file,
        floor=file_floor,
        floor_label="open + fcntl lock + unlock + close",
        libraries=(
            Library(
                "tenure",
                "tenure",
                TenureClient,
                ("tenure",),
                is_tenure=True,
                note="FIFO queue of OFD-locked entries, woken by inotify",
            ),
            _aio(("tenure",)),
            Library(
                "fasteners",
                "fasteners InterProcessLock",
                FastenersClient,
                ("fasteners",),
                note="fcntl lock, polls 10-100 ms",
            ),
            Library(
                "filelock",
                "filelock FileLock",
                FileLockClient,
                ("filelock",),
                note="fcntl lock, polls every 50 ms",
            ),
            Library(
                "portalocker",
                "portalocker Lock",
                PortalockerClient,
                ("portalocker",),
                note="flock, polls every 250 ms",
            ),
        ),
        wakeup="FIFO queue of OFD-locked entries; inotify on the one entry a waiter depends on",
        afloor_label="none: file locks are the same syscalls under asyncio; the sync floor",
    ),
    "zookeeper": Backend(
        name="zookeeper",
        start=_start_zookeeper,
        floor=zookeeper_floor,
        floor_label="create + delete of an ephemeral node (kazoo)",
        libraries=(
            Library(
                "tenure",
                "tenure",
                TenureClient,
                ("tenure", "kazoo"),
                is_tenure=True,
                note="one transaction when free; else sequential node + predecessor watch",
            ),
            _aio(("tenure", "kazoo"), "tenure.aio: kazoo's threads bridged to the event loop"),
            Library(
                "kazoo",
                "kazoo Lock",
                KazooLockClient,
                ("kazoo",),
                note="sequential node + predecessor watch",
            ),
            Library(
                "tooz",
                "tooz (zookeeper)",
                ToozZooKeeperClient,
                ("tooz", "kazoo"),
                note="kazoo Lock underneath",
            ),
        ),
        wakeup="exists watch on the predecessor node (one per handoff)",
        afloor_label="none: kazoo has no asyncio client; the sync floor (kazoo)",
    ),
    "etcd": Backend(
        name="etcd",
        start=_start_etcd,
        floor=etcd_floor,
        floor_label="Txn + DeleteRange (grpc, tenure's stubs)",
        libraries=(
            Library(
                "tenure",
                "tenure",
                TenureClient,
                ("tenure", "grpc"),
                is_tenure=True,
                note="revision-ordered keys, watch on the predecessor's delete",
            ),
            _aio(("tenure", "grpc")),
            Library(
                "tooz-etcd3gw",
                "tooz (etcd3+http gateway)",
                ToozEtcdClient,
                ("tooz", "etcd3gw"),
                note="lease + Txn over the JSON gateway, polls to wait",
            ),
            Library(
                "python-etcd3",
                "python-etcd3 Lock",
                PythonEtcd3Client,
                ("benchmarks._etcd3",),
                note="lease + Txn per try, watch_once on the key; generated modules rebuilt",
            ),
        ),
        commandstats=True,
        stats=EtcdServerStats,
        wakeup="watch on the newest older key's delete (one waiter woken per release)",
        afloor=etcd_afloor,
        afloor_label="Txn + DeleteRange (grpc.aio, tenure's stubs)",
    ),
}
