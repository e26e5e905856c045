"""The backends the contract suite runs against, and how a test reaches each one.

A :class:`Backend` gives a URL with a fresh namespace per test, the backend's capabilities, a
short TTL for loss tests, and ``steal(name, kind='lock')``: delete a lock's (or an election's)
entry behind its holder's back (what an operator or a split brain would do), so tests can prove
that loss is noticed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tenure import Capabilities
from tenure._async.backends.file import FileDriver, _stem

#: Backends under contract; each server backend adds itself here as it lands.
BACKENDS = [
    "file",
    "redis",
    "redis-sentinel",
    "redlock",
    "postgres",
    "zookeeper",
    "etcd",
    "etcd-cluster",
]


@dataclass
class Backend:
    name: str
    url: str
    capabilities: Capabilities
    ttl: float
    steal: Callable[..., None]

    def __repr__(self) -> str:
        return f"Backend({self.name})"


def make_backend(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    namespace = "t" + uuid.uuid4().hex[:10]
    if name == "file":
        root = tmp_path / "locks"

        def steal(lock_name: str, kind: str = "lock") -> None:
            (root / namespace / kind / f"{_stem(lock_name)}.lock").unlink()

        return Backend(
            name,
            f"file://{root}?namespace={namespace}",
            FileDriver.capabilities,
            ttl=1.0,
            steal=steal,
        )
    if name == "redis":
        import redis

        from tenure._async.backends.redis import RedisDriver

        server = request.getfixturevalue("redis_server")

        def steal(lock_name: str, kind: str = "lock") -> None:
            with redis.Redis(host=server.host, port=server.port) as r:
                assert r.delete(f"{namespace}:{{{kind}/{lock_name}}}:holder") == 1

        return Backend(
            name,
            f"{server.url}?namespace={namespace}",
            RedisDriver.capabilities,
            ttl=1.0,
            steal=steal,
        )
    if name == "redis-sentinel":
        from tenure._async.backends.redis import RedisDriver

        group = request.getfixturevalue("redis_sentinel")

        def steal(lock_name: str, kind: str = "lock") -> None:
            with group.current_master().client() as r:
                assert r.delete(f"{namespace}:{{{kind}/{lock_name}}}:holder") == 1

        return Backend(
            name,
            f"{group.url}?namespace={namespace}",
            RedisDriver.capabilities,
            ttl=1.0,
            steal=steal,
        )
    if name == "postgres":
        import psycopg

        from tenure._async.backends.postgres import PostgresDriver

        server = request.getfixturevalue("postgres_server")

        def steal(lock_name: str, kind: str = "lock") -> None:
            # Advisory locks belong to a server session: end the holder's (and wait for it).
            with psycopg.connect(server.url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(h.backend_pid, 5000))"
                    # (an exclusive holder's record is in its key's counters row)
                    " FROM (SELECT backend_pid, key, namespace, name, NULL AS m FROM tenure.holders"
                    " UNION ALL SELECT backend_pid, key, namespace, name, 'ExclusiveLock'"
                    " FROM tenure.counters) h JOIN pg_locks l ON l.pid = h.backend_pid"
                    " AND l.mode = coalesce(h.m, l.mode)"
                    " AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                    " AND l.classid = ((h.key >> 32) & 4294967295)::oid"
                    " AND l.objid = (h.key & 4294967295)::oid"
                    " WHERE h.namespace = %s AND h.name = %s",
                    (namespace, f"{kind}/{lock_name}"),
                ).fetchone()
            assert row is not None
            assert row[0] == 1, f"no holder of {kind}/{lock_name} to steal from"

        return Backend(
            name,
            f"{server.url}?namespace={namespace}",
            PostgresDriver.capabilities,
            ttl=1.0,
            steal=steal,
        )
    if name == "zookeeper":
        from tenure._async.backends.zookeeper import ZooKeeperDriver

        ensemble = request.getfixturevalue("zookeeper_server")
        return Backend(
            name,
            f"{ensemble.url}?namespace={namespace}",
            ZooKeeperDriver.capabilities,
            ttl=1.0,
            steal=zookeeper_stealer(ensemble.hosts, f"/{namespace}"),
        )
    if name in ("etcd", "etcd-cluster"):
        from tenure._async.backends.etcd import EtcdDriver

        cluster = request.getfixturevalue("etcd_server" if name == "etcd" else "etcd_cluster")

        def steal(lock_name: str, kind: str = "lock") -> None:
            etcd_steal(cluster.endpoints, f"{namespace}/{kind}/{lock_name}//")

        return Backend(
            name, f"{cluster.url}?namespace={namespace}", EtcdDriver.capabilities, 1.0, steal
        )
    if name == "redlock":
        import redis

        from tenure._async.backends.redlock import RedlockDriver
        from tests.servers import redlock_url

        masters = request.getfixturevalue("redis_masters")

        def steal(lock_name: str, kind: str = "lock") -> None:
            key = f"{namespace}:{{{kind}/{lock_name}}}:holder"
            deleted = 0
            for master in masters:
                with redis.Redis(host=master.host, port=master.port) as r:
                    deleted += r.delete(key)
            assert deleted >= len(masters) // 2 + 1

        return Backend(
            name,
            f"{redlock_url(masters)}?namespace={namespace}",
            RedlockDriver.capabilities,
            ttl=1.0,
            steal=steal,
        )
    raise AssertionError(f"no contract set-up for backend {name!r}")


def zookeeper_stealer(hosts: str, root: str, auth: str | None = None) -> Callable[..., None]:
    """``steal`` for ZooKeeper: delete the holder's node (the first in sequence order) with a
    separate kazoo client (``auth``: ``user:password`` when the nodes carry ACLs)."""
    from urllib.parse import quote

    from kazoo.client import KazooClient

    def steal(lock_name: str, kind: str = "lock") -> None:
        zk = KazooClient(hosts=hosts, auth_data=[("digest", auth)] if auth else None)
        zk.start(10)
        try:
            parent = f"{root}/{kind}/{quote(lock_name, safe='')}"
            children = sorted(zk.get_children(parent), key=lambda c: c.rpartition("-")[2])
            assert children, f"nothing to steal under {parent}"
            zk.delete(f"{parent}/{children[0]}")
        finally:
            zk.stop()
            zk.close()

    return steal


def etcd_steal(endpoints: list[str], prefix: str) -> None:
    """Delete the holder's key (the oldest under ``prefix``) with our own stubs."""
    import grpc

    from tenure._etcdpb import rpc_pb2 as pb
    from tenure._etcdpb import rpc_pb2_grpc as pb_grpc

    key = prefix.encode()
    end = key[:-1] + bytes([key[-1] + 1])
    for endpoint in endpoints:  # the first member that answers
        try:
            with grpc.insecure_channel(endpoint) as channel:
                kv = pb_grpc.KVStub(channel)
                oldest = kv.Range(
                    pb.RangeRequest(
                        key=key,
                        range_end=end,
                        sort_target=pb.RangeRequest.SortTarget.CREATE,
                        sort_order=pb.RangeRequest.SortOrder.ASCEND,
                        limit=1,
                    ),
                    timeout=5,
                )
                assert oldest.kvs, f"nothing to steal under {prefix!r}"
                kv.DeleteRange(pb.DeleteRangeRequest(key=oldest.kvs[0].key), timeout=5)
                return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
    raise AssertionError(f"no etcd member of {endpoints} answered")
