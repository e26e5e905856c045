"""Redis with replicas: fencing tokens across a failover that lost writes, Sentinel (following
a failover, bad input) and Cluster (many slots, MOVED/ASK, a master killed under contention).

Every set-up is real: a master and a replica (``--replicaof``), a master + replica + three
sentinels, a cluster of three masters with a replica each (started once for the module).
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import tenure
from tenure import ExponentialRetry
from tenure.errors import BackendUnavailableError, ConfigurationError
from tests.backends.fencing import FencedResource
from tests.contract.runners import Runner
from tests.servers.process import free_port, make_temp_dir, remove_temp_dir, wait_until
from tests.servers.proxy import TcpProxy
from tests.servers.redis import (
    RedisCluster,
    RedisSentinelGroup,
    RedisServer,
    SentinelServer,
    start_redis,
    start_redis_cluster,
    start_redis_replica,
    start_redis_sentinel,
)

pytestmark = pytest.mark.server("redis")

#: Retry through a failover (about 1-2 s here) instead of giving up after the default's 8 tries.
PATIENT = ExponentialRetry(base=0.05, cap=0.5, max_attempts=None)


@pytest.fixture
def ns() -> str:
    return "ha" + uuid.uuid4().hex[:10]


def counter(server: RedisServer, ns: str, name: str) -> int:
    with server.client() as r:
        return int(r.get(f"{ns}:{{lock/{name}}}:token") or 0)


# -- tokens across a failover ----------------------------------------------------------------


def test_tokens_never_go_backwards_across_a_failover_that_lost_writes(ns: str) -> None:
    """The replica has the counter, only an older one (asynchronous replication lost the last
    writes): a plain INCR would hand out a token the old master already gave."""
    master = start_redis()
    replica = start_redis_replica(master)
    try:
        tokens: list[int] = []
        with tenure.connect(f"{master.url}?namespace={ns}") as client:
            lock = client.lock("fenced")
            for _ in range(3):
                assert lock.acquire(timeout=5)
                tokens.append(lock.token)
                lock.release()
            with master.client() as r:
                assert r.wait(1, 5000) == 1  # the replica has these grants
            with replica.client() as r:
                r.replicaof("NO", "ONE")  # cut off (and promoted): it keeps what it has
            for _ in range(5):  # acknowledged by the old master, never replicated
                assert lock.acquire(timeout=5)
                tokens.append(lock.token)
                lock.release()
        master.kill()
        assert tokens == sorted(set(tokens)), "tokens must strictly increase"
        assert counter(replica, ns, "fenced") == tokens[2], "the promoted replica is behind"
        with tenure.connect(f"{replica.url}?namespace={ns}") as client:
            lock = client.lock("fenced")
            assert lock.acquire(timeout=5)
            assert lock.token > max(tokens), "a token went backwards across the failover"
            lock.release()
    finally:
        replica.close()
        master.close()


# -- Sentinel --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel() -> Iterator[RedisSentinelGroup]:
    """Shared by the tests that do not fail over (they must not kill or pause its nodes)."""
    group = start_redis_sentinel(replicas=1, sentinels=3)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def fresh_sentinel() -> Iterator[RedisSentinelGroup]:
    group = start_redis_sentinel(replicas=1, sentinels=3)
    try:
        yield group
    finally:
        group.close()


def test_sentinel_finds_the_master_for_every_primitive(
    sentinel: RedisSentinelGroup, ns: str
) -> None:
    url = f"{sentinel.url}?namespace={ns}"
    with tenure.connect(url) as a, tenure.connect(url) as b:
        lock = a.lock("basic")
        assert lock.acquire(timeout=5)
        assert not b.lock("basic").acquire(blocking=False)
        holder = b.holder("basic")
        assert holder is not None
        assert holder.token == lock.token
        waiter = b.lock("basic")
        runner = Runner()
        runner.start(lambda: waiter.acquire(timeout=10))
        Runner.wait_for(lambda: len(a.contenders("basic")) == 2, 10)
        first = lock.token
        lock.release()
        assert runner.join(10) == [True]
        assert waiter.token > first
        waiter.release()
        readers = [a.rwlock("rw").read, b.rwlock("rw").read]
        for reader in readers:
            assert reader.acquire(blocking=False)
        with tenure.connect(url) as c:
            assert not c.rwlock("rw").write.acquire(blocking=False)
        for reader in readers:
            reader.release()
        permit = a.semaphore("sem", limit=1)
        assert permit.acquire(blocking=False)
        assert not b.semaphore("sem", limit=1).acquire(blocking=False)
        permit.release()
        with a.election("leader", value="a"):
            leader = b.election("leader").leader()
            assert leader is not None
            assert leader.value == "a"
    # The keys are on the master the sentinels name.
    with sentinel.current_master().client() as r:
        assert r.exists(f"{ns}:{{lock/basic}}:token") == 1


def test_sentinel_bad_input_names_hosts_never_the_password(
    sentinel: RedisSentinelGroup, ns: str
) -> None:
    hosts = ",".join(s.endpoint for s in sentinel.sentinels)
    with pytest.raises(ConfigurationError, match="monitor no service 'nope'") as info:
        tenure.connect(f"redis+sentinel://{hosts}/nope")
    assert sentinel.sentinels[0].endpoint in str(info.value)
    with pytest.raises(ConfigurationError, match="service name"):
        tenure.connect(f"redis+sentinel://{hosts}")
    with pytest.raises(ConfigurationError, match="db"):
        tenure.connect(f"{sentinel.url}?db=x")
    with pytest.raises(ConfigurationError, match="redis\\+sentinel"):
        tenure.connect(f"{sentinel.master.url}?sentinel_password=x")
    # No sentinel answers: unavailable, naming each one.
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="no redis sentinel answered") as down:
        tenure.connect(f"redis+sentinel://{','.join(dead)}/{sentinel.service}")
    assert time.monotonic() - started < 5
    assert all(d in str(down.value) for d in dead)
    # A wrong password for the data nodes: named as the service's, never shown.
    with pytest.raises(ConfigurationError, match="rejected the credentials") as bad:
        tenure.connect(f"redis+sentinel://nobody:data-secret@{hosts}/{sentinel.service}")
    assert "data-secret" not in str(bad.value)
    # A sentinel with a password of its own: none given, a wrong one, the right one.
    tmp = make_temp_dir("sentinel-auth")
    guarded = SentinelServer(
        tmp, sentinel.service, sentinel.master, 1, "guarded", password="sentinel-secret"
    )
    try:
        guarded.start()
        url = f"redis+sentinel://{guarded.endpoint}/{sentinel.service}?namespace={ns}"
        with pytest.raises(ConfigurationError, match="rejected the credentials") as noauth:
            tenure.connect(url)
        assert guarded.endpoint in str(noauth.value)
        with pytest.raises(ConfigurationError, match="rejected the credentials") as wrong:
            tenure.connect(url, sentinel_password="not-it")
        assert "not-it" not in str(wrong.value)
        with tenure.connect(url, sentinel_password="sentinel-secret") as client:
            assert "sentinel-secret" not in repr(client)
            lock = client.lock("guarded")
            assert lock.acquire(timeout=5)
            lock.release()
    finally:
        guarded.close()
        remove_temp_dir(tmp)


def test_sentinel_failover_keeps_replicated_locks_and_reports_the_others_lost(
    fresh_sentinel: RedisSentinelGroup, ns: str
) -> None:
    """Kill the master while a client holds two locks: one replicated before the kill, one
    granted while the replica was stopped (a write asynchronous replication lost). The promoted
    replica has the first (the holder keeps it) and not the second (the holder's renewal finds
    it gone: lost); a new client gets the lost one, with a larger token."""
    group = fresh_sentinel
    url = f"{group.url}?namespace={ns}"
    old, replica = group.master, group.replicas[0]
    resource = FencedResource()
    # The replica replicates through a proxy, which then forwards nothing: the writes after
    # that never reach it, as when asynchronous replication loses the last writes. (Stopping
    # the replica would not do: the kernel still buffers what the master sends it.)
    link = TcpProxy(old.host, old.port)
    with (
        link,
        tenure.connect(url, ttl=10.0, retry=PATIENT) as holder,
        tenure.connect(url, ttl=10.0, retry=PATIENT) as other,
    ):
        with replica.client() as r:
            r.replicaof(link.host, link.port)
        wait_until(lambda: replica_in_sync(replica), 10, "replica in sync through the proxy")
        kept, dropped = holder.lock("kept"), holder.lock("dropped")
        assert kept.acquire(timeout=5)
        assert dropped.acquire(timeout=5)  # the replica has this grant's counter ...
        dropped.release()
        with old.client() as r:
            assert r.wait(1, 5000) == 1
        link.blackhole()
        assert dropped.acquire(timeout=5)  # ... and not this one's
        stale = dropped.token
        assert resource.write(stale)
        killed_at = time.monotonic()
        old.kill()
        new = group.wait_for_failover(old)
        assert new is replica
        failover = time.monotonic() - killed_at
        assert dropped.lost.wait(15), "the lock the new master lacks was not reported lost"
        lost_after = time.monotonic() - killed_at
        second = other.lock("dropped")
        assert second.acquire(timeout=15)
        assert second.token > stale
        assert resource.write(second.token)
        assert not resource.write(stale), "the stale holder's write was accepted"
        print(f"sentinel failover {failover:.2f} s; lost reported {lost_after:.2f} s after kill")
        # The replicated lock survived: renewed on the new master, still ours.
        kept.ensure_held()
        assert not kept.lost.is_set()
        assert not other.lock("kept").acquire(blocking=False)
        kept.release()
        second.release()


def replica_in_sync(replica: RedisServer) -> bool:
    with replica.client() as r:
        return bool(r.info("replication").get("master_link_status") == "up")


# -- Cluster ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """Three masters with a replica each, for the whole module (the last test kills a master)."""
    started = start_redis_cluster(3, 1)
    try:
        yield started
    finally:
        started.close()


def evalsha_calls(cluster: RedisCluster) -> int:
    total = 0
    for node in cluster.masters():
        with node.client() as r:
            stats = r.info("commandstats")
        total += int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    return total


def slot_of(cluster: RedisCluster, key: str) -> int:
    with cluster.masters()[0].client() as r:
        return int(r.execute_command("CLUSTER", "KEYSLOT", key))


def test_cluster_locks_on_many_slots_renewed_one_script_per_slot(
    cluster: RedisCluster, ns: str
) -> None:
    url = f"{cluster.url}&namespace={ns}"
    with tenure.connect(url) as client, tenure.connect(url) as other:
        session = client.session(ttl=30)
        names = [f"slot/{i}" for i in range(24)]
        locks = [session.lock(name) for name in names]
        for lock in locks:
            assert lock.acquire(blocking=False)
        slots = {slot_of(cluster, f"{ns}:{{lock/{name}}}:holder") for name in names}
        owners = {cluster.master_of(f"{ns}:{{lock/{name}}}:holder").port for name in names}
        assert len(owners) == 3, "the names should land on every master"
        assert session._renew()  # (the first may load the script on a node)
        before = evalsha_calls(cluster)
        assert session._renew()
        assert evalsha_calls(cluster) - before == len(slots)
        for name in names[:3]:
            assert not other.lock(name).acquire(blocking=False)
        tokens = {lock.token for lock in locks}
        assert len(tokens) == len(locks)
        session.close()
        assert other.holder(names[0]) is None


def _migrate_slot(cluster: RedisCluster, slot: int, *, finish: bool) -> tuple[Any, Any]:
    """Move ``slot`` to another master: IMPORTING/MIGRATING, its keys MIGRATEd, then (if
    ``finish``) SETSLOT NODE everywhere. Returns (source, target) nodes."""
    with cluster.masters()[0].client() as r:
        for start, end, master, *_ in r.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                source_port = int(master[1])
    masters = cluster.masters()
    source = next(m for m in masters if m.port == source_port)
    target = next(m for m in masters if m.port != source_port)
    with source.client() as src, target.client() as dst:
        source_id, target_id = (
            src.execute_command("CLUSTER", "MYID"),
            dst.execute_command("CLUSTER", "MYID"),
        )
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if keys:
            src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
        if finish:
            for node in cluster.masters():
                with node.client() as r:
                    r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return source, target


def test_cluster_follows_moved_and_ask_while_a_slot_migrates(
    cluster: RedisCluster, ns: str
) -> None:
    """A held lock's slot moves to another master: its keys are migrated (the source then
    answers ASK, the target takes the call after ASKING), then the slot is reassigned (MOVED).
    Renewal, a contender's acquire and the release follow, and the lock stays exclusive."""
    url = f"{cluster.url}&namespace={ns}"
    key = f"{ns}:{{lock/moving}}:holder"
    slot = slot_of(cluster, key)
    with tenure.connect(url) as client, tenure.connect(url) as other:
        session = client.session(ttl=30)
        lock = session.lock("moving")
        assert lock.acquire(timeout=5)
        assert session._renew()
        _source, target = _migrate_slot(cluster, slot, finish=False)
        try:
            # Mid-migration: the keys are on the target, the slot still the source's (ASK).
            assert session._renew()
            lock.ensure_held()
            assert not other.lock("moving").acquire(blocking=False)
        finally:
            with target.client() as dst:
                target_id = dst.execute_command("CLUSTER", "MYID")
            for node in cluster.masters():
                with node.client() as r:
                    r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        cluster.wait_ok()
        assert cluster.master_of(key).port == target.port
        assert session._renew()  # MOVED: the client learns the slot's new master
        lock.ensure_held()
        waiter = other.lock("moving")
        assert not waiter.acquire(blocking=False)
        token = lock.token
        lock.release()
        assert waiter.acquire(timeout=5)
        assert waiter.token > token
        waiter.release()
        session.close()
        with target.client() as r:
            assert r.exists(f"{ns}:{{lock/moving}}:token") == 1


def test_cluster_master_killed_during_contention_fenced_resource_stays_exclusive(
    cluster: RedisCluster, ns: str
) -> None:
    """Four clients contend for a name on one master; that master is killed and its replica
    takes over. Every write the fenced resource accepted came from the one holder at a time
    (tokens only go up), losses are reported, and work continues on the promoted replica.
    (Runs last in the module: it leaves the cluster with a master down.)"""
    url = f"{cluster.url}&namespace={ns}"
    key = f"{ns}:{{lock/contended}}:holder"
    victim = cluster.master_of(key)
    resource = FencedResource()
    stop = threading.Event()
    lost: list[int] = []
    grants: list[int] = []
    guard = threading.Lock()

    def work(client: tenure.Client) -> int:
        lock = client.lock("contended")
        done = 0
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if not lock.acquire(timeout=5):
                    continue
            except tenure.BackendError:
                continue
            token = lock.token
            with guard:
                grants.append(token)
            resource.write(token)
            done += 1
            try:
                lock.release()
            except tenure.LockLostError:
                with guard:
                    lost.append(token)
            except tenure.BackendError:
                pass
        return done

    clients = [tenure.connect(url, ttl=2.0, retry=PATIENT) for _ in range(4)]
    try:
        runner = Runner()
        for client in clients:
            runner.start(functools.partial(work, client))
        wait_until(lambda: len(grants) >= 20, 30, "grants before the kill")
        victim.kill()
        cluster.wait_for_failover(victim)
        # No grant of this name between the kill and here (its master was down): the grants
        # so far are the dead master's, the ones from now on the promoted replica's.
        before = len(grants)
        wait_until(lambda: len(grants) >= before + 20, 30, "grants after the failover")
        stop.set()
        results = runner.join(90)
    finally:
        stop.set()
        for client in clients:
            client.close()
    assert sum(results) == len(grants)
    assert len(set(grants)) == len(grants), "two grants with one token"
    assert min(grants[before:]) > max(grants[:before]), "a token went backwards"
    print(
        f"cluster failover under contention: {len(grants)} grants, "
        f"{len(resource.rejected)} refused stale writes, {len(lost)} releases found the lock lost"
    )
    # The promoted replica continues above every token the dead master gave.
    assert cluster.master_of(key).port != victim.port
    with redis.Redis(host="127.0.0.1", port=cluster.master_of(key).port) as r:
        assert int(r.get(f"{ns}:{{lock/contended}}:token") or 0) >= max(grants)
