"""Self-tests of the server harness: every kind starts and answers, and faults behave."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.servers import (
    EtcdCluster,
    PostgresServer,
    RedisServer,
    ServerMissing,
    ServerProcess,
    TcpProxy,
    ZooKeeperEnsemble,
    live_server_pids,
    record_timing,
    redlock_url,
    require_binary,
    start_etcd_cluster,
    start_postgres,
    start_redis,
    start_zookeeper,
    wait_until,
)
from tests.servers.plugin import skip_or_fail
from tests.servers.process import _children


def _gone(pid: int) -> bool:
    """The process does not exist any more (or is a zombie waiting for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _retry(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Call ``fn`` until it stops raising (for clients during a fail-over)."""
    box: list[Any] = []

    def attempt() -> bool:
        box.append(fn())
        return True

    wait_until(attempt, timeout, what)
    return box[-1]


# -- every kind starts and answers ---------------------------------------------------------


def test_redis_answers_ping(redis_server: RedisServer) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
        assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
        assert redis_server.ready_seconds is not None
    finally:
        client.close()


def test_redis_masters_are_independent(redis_masters: list[RedisServer]) -> None:
    import redis

    assert len({s.port for s in redis_masters}) == 5
    assert redlock_url(redis_masters) == "redlock://" + ",".join(
        f"127.0.0.1:{s.port}" for s in redis_masters
    )
    clients = [redis.Redis.from_url(s.url) for s in redis_masters]
    try:
        clients[0].set("only-on-first", "1")
        assert clients[0].get("only-on-first") == b"1"
        assert all(c.get("only-on-first") is None for c in clients[1:])
        for c in clients:
            assert c.info("replication")["role"] == "master"
    finally:
        for c in clients:
            c.delete("only-on-first")
            c.close()


def test_etcd_put_get(etcd_server: EtcdCluster) -> None:
    etcd_server.put("harness/key", "value")
    assert etcd_server.get("harness/key") == "value"
    assert etcd_server.leader() is etcd_server.nodes[0]
    assert etcd_server.url == f"etcd://127.0.0.1:{etcd_server.nodes[0].port}"
    etcdctl = shutil.which("etcdctl")
    if etcdctl:
        out = subprocess.run(
            [etcdctl, "--endpoints", ",".join(etcd_server.endpoints), "get", "harness/key"],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        assert out.split() == ["harness/key", "value"]


def test_etcd_cluster_has_one_leader(etcd_cluster: EtcdCluster) -> None:
    leader = etcd_cluster.wait_for_leader()
    assert sum(n.is_leader() for n in etcd_cluster.nodes) == 1
    assert leader in etcd_cluster.nodes
    assert len(etcd_cluster.endpoints) == 3
    assert etcd_cluster.url == "etcd://" + ",".join(etcd_cluster.endpoints)


def test_zookeeper_create_get(zookeeper_server: ZooKeeperEnsemble) -> None:
    from kazoo.client import KazooClient  # type: ignore[import-untyped]

    assert zookeeper_server.nodes[0].mode() == "standalone"
    client = KazooClient(hosts=zookeeper_server.hosts, timeout=5.0)
    client.start(timeout=10)
    try:
        path = client.create("/harness-", b"data", sequence=True, ephemeral=True)
        data, _stat = client.get(path)
        assert data == b"data"
    finally:
        client.stop()
        client.close()


def test_zookeeper_ensemble_has_one_leader(zookeeper_ensemble: ZooKeeperEnsemble) -> None:
    zookeeper_ensemble.wait_for_leader()
    modes = sorted(str(n.mode()) for n in zookeeper_ensemble.nodes)
    assert modes == ["follower", "follower", "leader"]
    assert zookeeper_ensemble.url == "zookeeper://" + zookeeper_ensemble.hosts


def test_postgres_select_1(postgres_server: PostgresServer) -> None:
    import psycopg

    assert postgres_server.url == f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres"
    with psycopg.connect(postgres_server.url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        row = conn.execute("SHOW max_connections").fetchone()
        assert row == ("200",)


# -- faults ----------------------------------------------------------------------------


@pytest.mark.slow
def test_etcd_cluster_fails_over_after_leader_kill(fresh_etcd_cluster: EtcdCluster) -> None:
    cluster = fresh_etcd_cluster
    old = cluster.wait_for_leader()
    cluster.put("before", "1")
    t0 = time.monotonic()
    old.kill()
    assert not old.alive
    new = cluster.wait_for_leader(timeout=15)
    elected = time.monotonic() - t0
    _retry(lambda: cluster.put("after", "2"), 10, "etcd write after fail-over")
    writable = time.monotonic() - t0
    assert new is not old
    assert cluster.get("before") == "1"
    assert cluster.get("after") == "2"
    record_timing("etcd x3 leader fail-over", elected)
    print(f"etcd: new leader {elected:.2f} s after SIGKILL, writable after {writable:.2f} s")
    # the killed member rejoins with its data
    old.restart()
    wait_until(lambda: old.status()["leader"] != "0", 10, "rejoined member sees a leader")


@pytest.mark.slow
def test_zookeeper_ensemble_survives_leader_kill(
    fresh_zookeeper_ensemble: ZooKeeperEnsemble,
) -> None:
    from kazoo.client import KazooClient

    ensemble = fresh_zookeeper_ensemble
    old = ensemble.wait_for_leader()
    client = KazooClient(hosts=ensemble.hosts, timeout=10.0)
    client.start(timeout=10)
    try:
        client.create("/survivor", b"before")
        t0 = time.monotonic()
        old.kill()
        new = ensemble.wait_for_leader(timeout=20)
        elected = time.monotonic() - t0
        assert new is not old
        _retry(lambda: client.set("/survivor", b"after"), 20, "zookeeper write after fail-over")
        writable = time.monotonic() - t0
        assert client.get("/survivor")[0] == b"after"
        record_timing("zookeeper x3 leader fail-over", elected)
        print(f"zookeeper: new leader {elected:.2f} s after SIGKILL, writable {writable:.2f} s")
        # the killed node rejoins (same port, same data dir) as a follower
        old.restart()
        assert old.mode() == "follower"
        ensemble.wait_serving()
    finally:
        client.stop()
        client.close()


def test_paused_redis_times_out_and_recovers(fresh_redis: RedisServer) -> None:
    import redis

    client = redis.Redis.from_url(fresh_redis.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    try:
        assert client.ping()
        fresh_redis.pause()
        try:
            assert fresh_redis.alive
            assert fresh_redis.paused
            with pytest.raises(redis.TimeoutError):
                client.ping()
        finally:
            fresh_redis.resume()
        assert _retry(client.ping, 5, "redis answers after SIGCONT") is True
    finally:
        client.close()


def test_redis_restart_keeps_port(fresh_redis: RedisServer) -> None:
    import redis

    old_pid, port = fresh_redis.pid, fresh_redis.port
    fresh_redis.restart()
    assert fresh_redis.port == port
    assert fresh_redis.pid != old_pid
    assert _gone(old_pid)
    client = redis.Redis.from_url(fresh_redis.url, socket_timeout=2)
    try:
        assert client.ping()
    finally:
        client.close()


def test_proxy_drops_one_reply(redis_proxy: TcpProxy) -> None:
    import redis

    client = redis.Redis.from_url(redis_proxy.url_for("redis", "/0"), socket_timeout=0.5)
    try:
        assert client.set("proxy-key", "1")
        redis_proxy.drop_next_reply()
        with pytest.raises(redis.TimeoutError):
            client.get("proxy-key")
        assert client.get("proxy-key") == b"1"
        assert client.ping()
    finally:
        client.delete("proxy-key")
        client.close()


def test_proxy_blackhole_and_heal(redis_proxy: TcpProxy) -> None:
    import redis

    client = redis.Redis.from_url(redis_proxy.url_for("redis"), socket_timeout=0.3)
    try:
        assert client.ping()
        redis_proxy.blackhole()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        # new connections are accepted but stay silent, too
        other = redis.Redis.from_url(redis_proxy.url_for("redis"), socket_timeout=0.3)
        try:
            with pytest.raises(redis.TimeoutError):
                other.ping()
        finally:
            other.close()
        redis_proxy.heal()
        assert client.ping()
    finally:
        client.close()


def test_proxy_delay_and_sever(redis_proxy: TcpProxy) -> None:
    import redis

    client = redis.Redis.from_url(redis_proxy.url_for("redis"), socket_timeout=5)
    try:
        assert client.ping()
        redis_proxy.delay(0.2)
        t0 = time.monotonic()
        assert client.ping()
        elapsed = time.monotonic() - t0
        assert 0.35 <= elapsed < 3, elapsed  # 0.2 s each way
        redis_proxy.heal()
        assert redis_proxy.connections == 1
        redis_proxy.sever()
        assert redis_proxy.connections == 0
        with socket.create_connection((redis_proxy.host, redis_proxy.port), timeout=2) as raw:
            raw.sendall(b"PING\r\n")
            assert raw.recv(100) == b"+PONG\r\n"
            redis_proxy.sever()
            assert raw.recv(100) == b""  # closed by the proxy
        assert client.ping()  # redis-py reconnects
    finally:
        client.close()


@pytest.mark.slow
def test_etcd_restart_keeps_data() -> None:
    try:
        require_binary("etcd")
    except ServerMissing as exc:
        skip_or_fail(exc)
    with start_etcd_cluster(1) as cluster:
        node = cluster.nodes[0]
        cluster.put("durable", "yes")
        old_pid = node.pid
        node.restart()
        assert node.pid != old_pid
        assert cluster.get("durable") == "yes"
        node.kill()
        node.restart()
        assert cluster.get("durable") == "yes"


def test_postgres_kill_takes_children_and_restart_works(fresh_postgres: PostgresServer) -> None:
    import psycopg

    children = _children(fresh_postgres.pid)
    assert children, "a running postmaster has background workers"
    fresh_postgres.kill()
    wait_until(lambda: all(_gone(p) for p in children), 10, "postgres children gone")
    fresh_postgres.restart()
    with psycopg.connect(fresh_postgres.url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.slow
def test_every_started_pid_is_gone_after_stop() -> None:
    starters: list[tuple[str, Callable[[], Any]]] = [
        ("redis", start_redis),
        ("etcd", lambda: start_etcd_cluster(1)),
        ("zookeeper", lambda: start_zookeeper(1)),
        ("postgres", start_postgres),
    ]
    started: list[Any] = []
    try:
        for kind, start in starters:
            try:
                require_binary(kind)
            except ServerMissing:
                continue
            started.append(start())
        procs: list[ServerProcess] = []
        for s in started:
            procs.extend(s.nodes if hasattr(s, "nodes") else [s])
        assert procs, "no server installed"
        pids = [p.pid for p in procs]
        descendants = [c for p in pids for c in _children(p)]
        assert all(p.alive for p in procs)
        assert set(pids) <= set(live_server_pids())
    finally:
        for s in started:
            s.close()
    assert not any(p.alive for p in procs)
    assert not set(pids) & set(live_server_pids())
    assert all(_gone(p) for p in pids)
    wait_until(lambda: all(_gone(p) for p in descendants), 10, "children gone")
    for s in started:  # close() removed the temp dirs the harness created
        tmp = s.tmp if hasattr(s, "nodes") else s.owned_tmp
        assert tmp is None or not Path(tmp).exists()


def test_missing_binary_skips_or_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerMissing, match="redis-server") as info:
        require_binary("redis")
    with pytest.raises(ServerMissing, match="etcd-server"):
        require_binary("etcd")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server"):
        skip_or_fail(info.value)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="redis-server"):
        skip_or_fail(info.value)
