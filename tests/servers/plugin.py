"""pytest fixtures and hooks for the throw-away servers (see :mod:`tests.servers`).

Made available to the whole suite by ``from tests.servers.plugin import *`` in
``tests/conftest.py``.

Session-scoped (shared; don't kill or pause them): ``redis_server``, ``redis_masters`` (5),
``redis_sentinel`` (a master, a replica, 3 sentinels),
``etcd_server`` (1 node), ``etcd_cluster`` (3), ``zookeeper_server``, ``zookeeper_ensemble``
(3), ``postgres_server``.  Function-scoped, for destructive fault tests: ``fresh_redis``,
``fresh_etcd_cluster`` (3), ``fresh_zookeeper_ensemble`` (3), ``fresh_postgres``, and
``redis_proxy`` (a :class:`TcpProxy` in front of ``redis_server``).

A missing server binary skips the test (or fails it when ``CI=true``) with the Debian
package to install; so does ``@pytest.mark.server("redis")`` on a test.  At session end the
plugin kills any server process still alive and reports it as an error, and the terminal
summary shows how long each kind of server took to become ready.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from statistics import median
from typing import NoReturn, TypeVar

import pytest

from tests.servers import (
    EtcdCluster,
    PostgresServer,
    RedisServer,
    ServerMissing,
    TcpProxy,
    ZooKeeperEnsemble,
    kill_all_servers,
    require_binary,
    start_etcd_cluster,
    start_postgres,
    start_redis,
    start_redis_masters,
    start_zookeeper,
    startup_times,
    timings,
)
from tests.servers.redis import RedisSentinelGroup, start_redis_sentinel

__all__ = [
    "etcd_cluster",
    "etcd_server",
    "fresh_etcd_cluster",
    "fresh_postgres",
    "fresh_redis",
    "fresh_zookeeper_ensemble",
    "postgres_server",
    "pytest_runtest_setup",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
    "redis_masters",
    "redis_proxy",
    "redis_sentinel",
    "redis_server",
    "zookeeper_ensemble",
    "zookeeper_server",
]

T = TypeVar("T")


def skip_or_fail(exc: ServerMissing) -> NoReturn:
    """Skip the test, or fail it in CI (``CI=true``), because a server is not installed."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{exc} (CI=true: missing servers are errors)", pytrace=False)
    pytest.skip(str(exc))


def _start(factory: Callable[[], T]) -> T:
    try:
        return factory()
    except ServerMissing as exc:
        missing = exc
    skip_or_fail(missing)  # outside the except block: no chained traceback in the report


# -- session-scoped ------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = _start(start_redis)
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_masters() -> Iterator[list[RedisServer]]:
    servers = _start(lambda: start_redis_masters(5))
    yield servers
    for s in servers:
        s.close()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelGroup]:
    group = _start(start_redis_sentinel)
    yield group
    group.close()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdCluster]:
    """A one-node etcd "cluster" (use ``.url``, ``.endpoints``, ``.nodes[0]``)."""
    cluster = _start(lambda: start_etcd_cluster(1))
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    cluster = _start(lambda: start_etcd_cluster(3))
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def zookeeper_server() -> Iterator[ZooKeeperEnsemble]:
    """A standalone ZooKeeper (use ``.url``, ``.hosts``, ``.nodes[0]``)."""
    ensemble = _start(lambda: start_zookeeper(1))
    yield ensemble
    ensemble.close()


@pytest.fixture(scope="session")
def zookeeper_ensemble() -> Iterator[ZooKeeperEnsemble]:
    ensemble = _start(lambda: start_zookeeper(3))
    yield ensemble
    ensemble.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = _start(start_postgres)
    yield server
    server.close()


# -- function-scoped (destructive tests) -----------------------------------------------


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    server = _start(start_redis)
    yield server
    server.close()


@pytest.fixture
def fresh_etcd_cluster() -> Iterator[EtcdCluster]:
    cluster = _start(lambda: start_etcd_cluster(3))
    yield cluster
    cluster.close()


@pytest.fixture
def fresh_zookeeper_ensemble() -> Iterator[ZooKeeperEnsemble]:
    ensemble = _start(lambda: start_zookeeper(3))
    yield ensemble
    ensemble.close()


@pytest.fixture
def fresh_postgres() -> Iterator[PostgresServer]:
    server = _start(start_postgres)
    yield server
    server.close()


@pytest.fixture
def redis_proxy(redis_server: RedisServer) -> Iterator[TcpProxy]:
    """A pass-through :class:`TcpProxy` in front of the session Redis (``.url_for("redis")``)."""
    proxy = TcpProxy(redis_server.host, redis_server.port)
    yield proxy
    proxy.close()


# -- hooks ----------------------------------------------------------------------------


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("server"):
        if not mark.args:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.server needs a kind")
        try:
            require_binary(str(mark.args[0]))
        except ServerMissing as exc:
            missing = exc
        else:
            continue
        skip_or_fail(missing)


_leaked: list[int] = []


@pytest.hookimpl(trylast=True)  # after the runner's own teardown of session fixtures
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaked = kill_all_servers()
    if leaked:
        _leaked[:] = leaked
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _summarise(entries: list[tuple[str, float]]) -> str:
    by_label: dict[str, list[float]] = {}
    for label, seconds in entries:
        by_label.setdefault(label, []).append(seconds)
    parts = []
    for label, values in by_label.items():
        if len(values) == 1:
            parts.append(f"{label} {values[0]:.2f} s")
        else:
            parts.append(
                f"{label} {median(values):.2f} s (median of {len(values)}, max {max(values):.2f})"
            )
    return ", ".join(parts)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    starts = startup_times()
    if starts:
        terminalreporter.write_line(f"server start-up: {_summarise(starts)}")
    other = timings()
    if other:
        terminalreporter.write_line(f"server timings: {_summarise(other)}")
    if _leaked:
        terminalreporter.write_line(
            f"ERROR: server processes still alive at session end (killed now): "
            f"pids {_leaked}; a test started a server without closing it",
            red=True,
            bold=True,
        )
