"""Throw-away Redis, etcd, ZooKeeper and PostgreSQL servers for tests and benchmarks.

Plain Python (no pytest here; the fixtures live in :mod:`tests.servers.plugin`).  Servers
come from Debian's packages (``scripts/install-servers.sh``).  Every server runs in its own
temp dir (under /dev/shm when available, or ``$TENURE_TEST_TMPDIR``) on a free 127.0.0.1
port below the kernel's ephemeral range, is polled with a real request until ready (no
fixed sleeps; on failure :class:`ServerStartError` carries the tail of the server's log),
and stays in the caller's process group.  Every PID is kept in a module-level registry:
``atexit`` (and the pytest plugin at session end) SIGKILLs leftovers.

Starting servers (each returns an object with ``close()``; all are context managers)::

    start_redis(tmp=None) -> RedisServer                  # .url  redis://127.0.0.1:P/0
    start_redis_masters(n=5) -> list[RedisServer]         # independent masters (Redlock)
    redlock_url(servers) -> "redlock://127.0.0.1:p1,127.0.0.1:p2,..."
    start_etcd_cluster(n=1) -> EtcdCluster                # .url  etcd://127.0.0.1:p1,...
    start_zookeeper(n=1) -> ZooKeeperEnsemble             # .url  zookeeper://127.0.0.1:p1,...
    start_postgres(tmp=None) -> PostgresServer            # .url  postgresql://postgres@127.0.0.1:P/postgres
    TcpProxy(host, port)                                  # fault-injecting forwarder

:class:`ServerProcess` (RedisServer, PostgresServer, EtcdNode, ZooKeeperNode):
``.pid .host .port .alive .paused .ready_seconds .log_path``; ``.stop()`` (SIGTERM —
SIGINT for postgres, i.e. fast shutdown — then SIGKILL after a grace), ``.kill()``
(SIGKILL + reap, children too), ``.pause()`` (SIGSTOP), ``.resume()`` (SIGCONT),
``.restart()`` (same port, same data dir), ``.close()`` (stop + remove its temp dir),
``.log_tail()``.

Clusters (:class:`EtcdCluster`, :class:`ZooKeeperEnsemble`): ``.nodes``, ``.endpoints``
(``["127.0.0.1:p", ...]``), ``.url``, ``.leader()`` (the live node that says it leads, or
None), ``.wait_for_leader(timeout)``, ``.stop()``, ``.close()``, ``.ready_seconds``.
etcd: ``EtcdNode.client_url``/``.status()``, ``EtcdCluster.put()/get()`` via the HTTP
gateway.  ZooKeeper: ``.hosts`` (kazoo hosts string), ``ZooKeeperNode.mode()`` (``srvr``).
etcd runs with heartbeat 50 ms / election 500 ms; ZooKeeper with tickTime 250 ms,
syncLimit 4 ticks, session timeouts 500 ms .. 60 s.

Helpers: :func:`require_binary` (raises :class:`ServerMissing` naming the Debian package),
:func:`wait_until` (poll with backoff and a deadline), :func:`free_port`,
:func:`live_server_pids`, :func:`kill_all_servers`, :func:`startup_times`,
:func:`record_timing`/:func:`timings` (extra measurements shown in the pytest summary);
:func:`tests.servers.tls.make_certificates` (a CA and server and client certificates, openssl)
for the TLS tests.
"""

from __future__ import annotations

from tests.servers.etcd import EtcdCluster, EtcdNode, etcd_binary, start_etcd_cluster
from tests.servers.postgres import (
    PgBouncer,
    PostgresServer,
    postgres_bindir,
    start_pgbouncer,
    start_postgres,
)
from tests.servers.process import (
    ServerMissing,
    ServerProcess,
    ServerStartError,
    free_port,
    kill_all_servers,
    live_server_pids,
    record_startup,
    record_timing,
    started_pids,
    startup_times,
    timings,
    wait_until,
)
from tests.servers.proxy import TcpProxy
from tests.servers.redis import (
    RedisServer,
    redis_binary,
    redlock_url,
    start_redis,
    start_redis_masters,
)
from tests.servers.zookeeper import (
    ZooKeeperEnsemble,
    ZooKeeperNode,
    start_zookeeper,
    zookeeper_classpath,
)

KINDS = ("redis", "etcd", "zookeeper", "postgres")


def require_binary(kind: str) -> None:
    """Raise :class:`ServerMissing` (naming the Debian package) if ``kind`` can't be run."""
    if kind == "redis":
        redis_binary()
    elif kind == "etcd":
        etcd_binary()
    elif kind == "zookeeper":
        zookeeper_classpath()
    elif kind == "postgres":
        postgres_bindir()
    else:
        raise ValueError(f"unknown server kind {kind!r}; expected one of {KINDS}")


__all__ = [
    "KINDS",
    "EtcdCluster",
    "EtcdNode",
    "PgBouncer",
    "PostgresServer",
    "RedisServer",
    "ServerMissing",
    "ServerProcess",
    "ServerStartError",
    "TcpProxy",
    "ZooKeeperEnsemble",
    "ZooKeeperNode",
    "free_port",
    "kill_all_servers",
    "live_server_pids",
    "record_startup",
    "record_timing",
    "redlock_url",
    "require_binary",
    "start_etcd_cluster",
    "start_pgbouncer",
    "start_postgres",
    "start_redis",
    "start_redis_masters",
    "start_zookeeper",
    "started_pids",
    "startup_times",
    "timings",
    "wait_until",
]
