"""Redis: single servers, independent masters for Redlock, a replica, a Sentinel group (master,
replicas, sentinels) and a Cluster (3 masters + 3 replicas).

The high-availability set-ups run with short timeouts so that a failover takes about a second
or two: Sentinel ``down-after-milliseconds`` 500 ms, Cluster ``cluster-node-timeout`` 1000 ms.
Nodes are killed, paused and restarted by PID like any :class:`ServerProcess`.
"""

from __future__ import annotations

import functools
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from tests.servers.process import (
    HOST,
    ServerGroup,
    ServerMissing,
    ServerProcess,
    _port_range,
    free_port,
    make_temp_dir,
    record_startup,
    start_all,
    tcp_request,
    wait_until,
)

__all__ = [
    "RedisCluster",
    "RedisSentinelGroup",
    "RedisServer",
    "SentinelServer",
    "redis_binary",
    "redlock_url",
    "start_redis",
    "start_redis_cluster",
    "start_redis_masters",
    "start_redis_replica",
    "start_redis_sentinel",
]


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise ServerMissing("redis", "redis-server", "redis-server")
    return path


class RedisServer(ServerProcess):
    """A redis-server without persistence, bound to 127.0.0.1."""

    kind = "redis"
    stop_grace = 5.0

    def __init__(
        self, tmp: Path, port: int | None = None, name: str = "redis", extra: Sequence[str] = ()
    ) -> None:
        port = port or free_port()
        argv = [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            HOST,
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
            "--daemonize",
            "no",
            "--loglevel",
            "notice",
            *extra,
        ]
        super().__init__(argv, port=port, log_path=tmp / f"{name}.log", cwd=tmp, name=name)
        self.tmp = tmp

    def probe(self) -> bool:
        return tcp_request(self.port, b"PING\r\n", timeout=0.5).startswith(b"+PONG")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self) -> redis.Redis:
        """A plain redis-py client to this node (close it)."""
        return redis.Redis(host=self.host, port=self.port, decode_responses=True)

    def role(self) -> str:
        """``master`` or ``slave``, as the node itself says."""
        with self.client() as r:
            return str(r.info("replication")["role"])


def start_redis(tmp: Path | None = None, *, timeout: float | None = None) -> RedisServer:
    """Start one Redis server in ``tmp`` (a new temp dir, removed by ``close()``, if None)."""
    t0 = time.monotonic()
    owned = tmp is None
    tmp = make_temp_dir("redis") if tmp is None else tmp
    server = RedisServer(tmp)
    if owned:
        server.owned_tmp = tmp
    server.start(timeout)
    record_startup("redis", time.monotonic() - t0)
    return server


def start_redis_masters(
    n: int = 5, tmp: Path | None = None, *, timeout: float | None = None
) -> list[RedisServer]:
    """Start ``n`` independent Redis masters (for Redlock), spawned in parallel.

    Each gets its own temp dir (or a sub-directory of ``tmp``); close them all."""
    servers = []
    for i in range(n):
        if tmp is None:
            d = make_temp_dir(f"redis-m{i}")
        else:
            d = tmp / f"m{i}"
            d.mkdir(parents=True, exist_ok=True)
        s = RedisServer(d, name=f"redis-m{i}")
        if tmp is None:
            s.owned_tmp = d
        servers.append(s)
    t0 = time.monotonic()
    start_all(servers, timeout)
    record_startup(f"redis x{n}", time.monotonic() - t0)
    return servers


def redlock_url(servers: Sequence[RedisServer]) -> str:
    """``redlock://127.0.0.1:p1,127.0.0.1:p2,...``"""
    return "redlock://" + ",".join(s.endpoint for s in servers)


def _wait_replicating(replica: RedisServer, timeout: float = 30.0) -> None:
    def up() -> bool:
        with replica.client() as r:
            return bool(r.info("replication").get("master_link_status") == "up")

    wait_until(up, timeout, f"{replica.name} replicating")


def start_redis_replica(master: RedisServer, *, timeout: float | None = None) -> RedisServer:
    """A replica of ``master`` (``--replicaof``) in its own temp dir, once it is in sync."""
    tmp = make_temp_dir("redis-replica")
    server = RedisServer(tmp, name="redis-replica", extra=["--replicaof", HOST, str(master.port)])
    server.owned_tmp = tmp
    server.start(timeout)
    _wait_replicating(server)
    return server


class SentinelServer(ServerProcess):
    """``redis-server <config> --sentinel`` (the config file is Sentinel's to rewrite)."""

    kind = "redis-sentinel"
    stop_grace = 5.0

    def __init__(self, tmp: Path, service: str, master: RedisServer, quorum: int, name: str,
                 down_after_ms: int = 500, failover_timeout_ms: int = 2000,
                 password: str | None = None) -> None:  # fmt: skip
        port = free_port()
        config = tmp / f"{name}.conf"
        config.write_text(
            f"port {port}\nbind {HOST}\nprotected-mode no\ndir {tmp}\n"
            f"sentinel monitor {service} {HOST} {master.port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {service} 1\n"
            + (f"requirepass {password}\n" if password else "")
        )
        argv = [redis_binary(), str(config), "--sentinel"]
        super().__init__(argv, port=port, log_path=tmp / f"{name}.log", cwd=tmp, name=name)

    def probe(self) -> bool:
        # (A sentinel with a password answers -NOAUTH: it is up all the same.)
        reply = tcp_request(self.port, b"PING\r\n", timeout=0.5)
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


class RedisSentinelGroup(ServerGroup):
    """A master, its replicas and the sentinels watching them as service ``service``.

    ``.url`` is ``redis+sentinel://127.0.0.1:s1,.../<service>``; ``.master_address()`` asks the
    sentinels; ``.node(port)`` finds a data node; ``.wait_for_failover(old)`` waits until the
    sentinels name another master and it says it is one."""

    def __init__(self, tmp: Path, owns_tmp: bool, *, replicas: int, sentinels: int,
                 service: str, down_after_ms: int, failover_timeout_ms: int) -> None:  # fmt: skip
        self.service = service
        self.master = RedisServer(tmp / "master", name="redis-master")
        self.replicas = [
            RedisServer(tmp / f"replica{i}", name=f"redis-replica{i}",
                        extra=["--replicaof", HOST, str(self.master.port)])
            for i in range(replicas)
        ]  # fmt: skip
        for node in (self.master, *self.replicas):
            node.tmp.mkdir(parents=True, exist_ok=True)
        self.sentinels = [
            SentinelServer(tmp, service, self.master, sentinels // 2 + 1, f"sentinel{i}",
                           down_after_ms, failover_timeout_ms)
            for i in range(sentinels)
        ]  # fmt: skip
        super().__init__([self.master, *self.replicas, *self.sentinels], tmp, owns_tmp)

    @property
    def data_nodes(self) -> list[RedisServer]:
        return [self.master, *self.replicas]

    @property
    def url(self) -> str:
        hosts = ",".join(s.endpoint for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def master_address(self) -> tuple[str, int] | None:
        """The master the first live sentinel names (None if none answers)."""
        for sentinel in self.sentinels:
            if not sentinel.alive or sentinel.paused:
                continue
            try:
                with redis.Redis(host=sentinel.host, port=sentinel.port, socket_timeout=1,
                                 decode_responses=True) as r:  # fmt: skip
                    found = r.sentinel_get_master_addr_by_name(self.service)
            except redis.RedisError:
                continue
            if found:
                return str(found[0]), int(found[1])
        return None

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.data_nodes if n.port == port)

    def current_master(self) -> RedisServer:
        address = self.master_address()
        assert address is not None, "no sentinel answered"
        return self.node(address[1])

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every sentinel knows the master, every replica and the other sentinels (they find
        each other through the master's hello channel, every 2 s): a failover can start."""
        want_replicas, want_others = len(self.data_nodes) - 1, len(self.sentinels) - 1

        def ready() -> bool:
            for sentinel in self.sentinels:
                with redis.Redis(host=sentinel.host, port=sentinel.port, socket_timeout=1) as r:
                    state = r.sentinel_master(self.service)
                    replicas = r.sentinel_slaves(self.service)
                if int(state["num-other-sentinels"]) < want_others:
                    return False
                live = [x for x in replicas if not (x["is_sdown"] or x["is_odown"])]
                if len(live) < want_replicas:
                    return False
            return True

        # (After a failover the roles changed: the replicas are the nodes that say so.)
        wait_until(
            lambda: sum(n.role() == "slave" for n in self.data_nodes) == want_replicas,
            timeout,
            "every data node but the master is a replica",
            max_interval=0.2,
        )
        for node in self.data_nodes:
            if node.role() == "slave":
                _wait_replicating(node, timeout)
        wait_until(ready, timeout, "sentinels ready", max_interval=0.2)

    def wait_for_failover(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until every live sentinel names a master other than ``old`` and it is one."""

        def moved() -> RedisServer | None:
            names = set()
            for sentinel in self.sentinels:
                if sentinel.alive and not sentinel.paused:
                    with redis.Redis(host=sentinel.host, port=sentinel.port,
                                     socket_timeout=1) as r:  # fmt: skip
                        found = r.sentinel_get_master_addr_by_name(self.service)
                    names.add(int(found[1]))
            if len(names) != 1 or old.port in names:
                return None
            new = self.node(names.pop())
            return new if new.role() == "master" else None

        found = wait_until(moved, timeout, "sentinel failover", max_interval=0.1)
        assert isinstance(found, RedisServer)
        return found

    def stop(self) -> None:
        # Sentinels first: else they fail over while the data nodes go.
        for node in [*self.sentinels, *self.replicas, self.master]:
            if node.paused:
                node.resume()
            node.stop()


def start_redis_sentinel(
    *,
    replicas: int = 1,
    sentinels: int = 3,
    service: str = "tenure",
    down_after_ms: int = 500,
    failover_timeout_ms: int = 2000,
    timeout: float | None = None,
) -> RedisSentinelGroup:
    """A master + ``replicas`` + ``sentinels``, ready to fail over; close it."""
    t0 = time.monotonic()
    tmp = make_temp_dir("redis-sentinel")
    group = RedisSentinelGroup(tmp, True, replicas=replicas, sentinels=sentinels,
                               service=service, down_after_ms=down_after_ms,
                               failover_timeout_ms=failover_timeout_ms)  # fmt: skip
    try:
        start_all([group.master, *group.replicas], timeout)
        start_all(group.sentinels, timeout)
        group.wait_ready()
    except BaseException:
        group.close()
        raise
    group.ready_seconds = time.monotonic() - t0
    record_startup(f"redis sentinel 1+{replicas}+{sentinels}", group.ready_seconds)
    return group


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, both below the ephemeral range."""
    _low, high = _port_range()
    for _ in range(500):
        port = free_port()
        if port + 10000 > high:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) for a cluster node")


class RedisCluster(ServerGroup):
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each (made by
    ``redis-cli --cluster create``). ``.url`` is ``redis://<first node>/0?cluster=true``."""

    parallel_stop = True

    def __init__(self, tmp: Path, owns_tmp: bool, n: int, node_timeout_ms: int) -> None:
        self.nodes: list[RedisServer] = []
        for i in range(n):
            d = tmp / f"node{i}"
            d.mkdir(parents=True, exist_ok=True)
            self.nodes.append(RedisServer(d, _cluster_port(), name=f"redis-cluster{i}", extra=[
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(d / "nodes.conf"),
                "--cluster-node-timeout", str(node_timeout_ms),
                # A master whose replica was promoted and that comes back must not take writes.
                "--cluster-replica-validity-factor", "0",
            ]))  # fmt: skip
        super().__init__(self.nodes, tmp, owns_tmp)

    @property
    def url(self) -> str:
        live = next(n for n in self.nodes if n.alive and not n.paused)
        return f"redis://{live.endpoint}/0?cluster=true"

    def masters(self) -> list[RedisServer]:
        """The live nodes that say they are masters (and serve slots)."""
        return [n for n in self.nodes if n.alive and not n.paused and n.role() == "master"]

    def master_of(self, key: str) -> RedisServer:
        """The live node that serves ``key``'s slot, as a live node's CLUSTER SLOTS says."""
        live = next(n for n in self.nodes if n.alive and not n.paused)
        with live.client() as r:
            slot = int(r.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in r.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node serves slot {slot}")

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Every live node says the cluster is ok and knows the same master per slot."""

        def ok() -> bool:
            views = set()
            for node in self.nodes:
                if node.alive and not node.paused:
                    with node.client() as r:
                        if r.execute_command("CLUSTER", "INFO").find("cluster_state:ok") < 0:
                            return False
                        slots = r.execute_command("CLUSTER", "SLOTS")
                        views.add(tuple(sorted((int(s[0]), int(s[2][1])) for s in slots)))
            return len(views) == 1

        wait_until(ok, timeout, "cluster state ok", max_interval=0.1)

    def wait_replicas(self, timeout: float = 30.0) -> None:
        """Wait until the cluster is ok and every live replica is in sync with its master
        (e.g. a killed master started again: it comes back as its successor's replica)."""
        self.wait_ok(timeout)

        def settled(node: RedisServer) -> bool:
            return node.role() == "slave" or bool(self._slots_of(node))

        for node in self.nodes:
            if node.alive and not node.paused:
                wait_until(functools.partial(settled, node), timeout, f"{node.name} settled")
                if node.role() == "slave":
                    _wait_replicating(node, timeout)

    def _slots_of(self, node: RedisServer) -> list[Any]:
        with node.client() as r:
            slots = r.execute_command("CLUSTER", "SLOTS")
        return [s for s in slots if int(s[2][1]) == node.port]

    def wait_for_failover(self, old: RedisServer, timeout: float = 30.0) -> None:
        """Wait until every live node says the cluster is ok with ``old`` serving no slot."""

        def moved() -> bool:
            for node in self.nodes:
                if node.alive and not node.paused and node is not old:
                    with node.client() as r:
                        if "cluster_state:ok" not in r.execute_command("CLUSTER", "INFO"):
                            return False
                        slots = r.execute_command("CLUSTER", "SLOTS")
                        if any(int(s[2][1]) == old.port for s in slots):
                            return False
            return True

        wait_until(moved, timeout, "cluster failover", max_interval=0.1)
        self.wait_ok(timeout)


def start_redis_cluster(
    masters: int = 3, replicas: int = 1, *, node_timeout_ms: int = 1000,
    timeout: float | None = None,
) -> RedisCluster:  # fmt: skip
    """``masters`` masters with ``replicas`` replicas each, slots spread, state ok; close it."""
    t0 = time.monotonic()
    tmp = make_temp_dir("redis-cluster")
    cluster = RedisCluster(tmp, True, masters * (1 + replicas), node_timeout_ms)
    try:
        start_all(cluster.nodes, timeout)
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ServerMissing("redis", "redis-cli", "redis-tools")
        subprocess.run(
            [cli, "--cluster", "create", *(n.endpoint for n in cluster.nodes),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        cluster.wait_ok()
        # Every replica in sync with its master before anyone kills one.
        for node in cluster.nodes:
            if node.role() == "slave":
                _wait_replicating(node)
    except BaseException:
        cluster.close()
        raise
    cluster.ready_seconds = time.monotonic() - t0
    record_startup(f"redis cluster {masters}+{masters * replicas}", cluster.ready_seconds)
    return cluster
