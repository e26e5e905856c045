"""Redis-specific behaviour: scripts, restarts, dead waiters, lost replies, O(1) renewal."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import tenure
from tenure.errors import BackendError, BackendUnavailableError, ConfigurationError
from tests.contract import workers
from tests.contract.runners import Runner
from tests.servers import RedisServer, TcpProxy

pytestmark = pytest.mark.server("redis")
SPAWN = multiprocessing.get_context("spawn")


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    Runner.wait_for(condition, timeout)


@pytest.fixture
def ns() -> str:
    return "r" + uuid.uuid4().hex[:10]


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=True) as r:
        yield r


def calls(r: redis.Redis, command: str) -> int:
    stats = r.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_script_cache_flush_is_transparent(
    redis_server: RedisServer, raw: redis.Redis, ns: str
) -> None:
    url = f"{redis_server.url}?namespace={ns}"
    with tenure.connect(url) as a, tenure.connect(url) as b:
        lock = a.lock("flushed")
        assert lock.acquire()
        raw.script_flush()
        lock.ensure_held()
        lock.release()
        raw.script_flush()
        other = b.lock("flushed")
        assert other.acquire(blocking=False)
        assert other.token > 0
        other.release()


def test_restart_that_loses_data_is_noticed_and_tokens_keep_increasing(
    fresh_redis: RedisServer,
) -> None:
    url = f"{fresh_redis.url}?namespace=restart"
    with tenure.connect(url, ttl=1.0) as a:
        lock = a.lock("kept")
        assert lock.acquire()
        old_token = lock.token
        fresh_redis.restart()  # no persistence: every key is gone
        assert lock.lost.wait(10), "the holder did not learn that its lock is gone"
        assert not lock.held
        with tenure.connect(url) as b:
            other = b.lock("kept")
            assert other.acquire(timeout=10)
            assert other.token > old_token, "fencing token went backwards after a restart"
            other.release()


def test_waiter_killed_while_queued_is_dropped(
    redis_server: RedisServer, ns: str, tmp_path: Path
) -> None:
    url = f"{redis_server.url}?namespace={ns}"
    ttl = 1.0
    with tenure.connect(url, ttl=ttl) as client, tenure.connect(url, ttl=ttl) as third:
        holder = client.lock("q")
        assert holder.acquire()
        ready = tmp_path / "never"
        victim = SPAWN.Process(target=workers.hold_forever, args=(url, "q", str(ready), ttl))
        victim.start()
        try:
            wait_for(lambda: len(client.contenders("q")) == 2, 60)
            os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
            victim.join(10)
            runner = Runner()
            late = third.lock("q")
            runner.start(lambda: late.acquire(timeout=10 * ttl + 10))
            wait_for(lambda: len(client.contenders("q")) == 3)
            holder.release()
            started = time.monotonic()
            assert runner.join(60) == [True]
            print(f"dead waiter skipped after {time.monotonic() - started:.3f} s")
            assert not ready.exists()
            assert late.token > 0
            late.release()
        finally:
            victim.kill()
            victim.join(10)


@pytest.fixture
def proxied(redis_proxy: TcpProxy, ns: str) -> str:
    return redis_proxy.url_for("redis", "/0") + f"?namespace={ns}&socket_timeout=0.5"


def test_lost_reply_on_acquire_leaves_no_orphan(
    redis_proxy: TcpProxy, proxied: str, redis_server: RedisServer, ns: str
) -> None:
    with tenure.connect(proxied) as client:
        lock = client.lock("orphan")
        redis_proxy.drop_next_reply()
        assert lock.acquire(timeout=10)  # the retry finds its own grant
        holders = client.contenders("orphan")
        assert len(holders) == 1
        assert holders[0].token == lock.token
        lock.release()
        assert client.holder("orphan") is None


def test_lost_reply_on_release_never_deletes_a_newer_holder(
    redis_proxy: TcpProxy, proxied: str, redis_server: RedisServer, ns: str
) -> None:
    direct = f"{redis_server.url}?namespace={ns}"
    with tenure.connect(proxied) as a, tenure.connect(direct) as b:
        first = a.lock("handoff")
        assert first.acquire()
        second = b.lock("handoff")
        runner = Runner()
        runner.start(lambda: second.acquire(timeout=30))
        wait_for(lambda: len(b.contenders("handoff")) == 2)
        redis_proxy.drop_next_reply()
        # The reply is lost; meanwhile `second` takes the lock; the retry must be a no-op.
        first.release()
        assert runner.join() == [True]
        holder = b.holder("handoff")
        assert holder is not None
        assert holder.token == second.token
        second.ensure_held()
        second.release()


def test_one_round_trip_renews_a_thousand_locks(
    redis_server: RedisServer, raw: redis.Redis, ns: str
) -> None:
    with tenure.connect(f"{redis_server.url}?namespace={ns}") as client:
        session = client.session(ttl=30)
        locks = [session.lock(f"many/{i}") for i in range(1000)]
        for lock in locks:
            assert lock.acquire(blocking=False)
        before = calls(raw, "evalsha")
        assert session._renew()
        assert calls(raw, "evalsha") - before == 1
        assert all(lock.held for lock in locks)
        session.close()


def test_release_wakes_exactly_one_waiter_and_waiters_do_not_poll(
    redis_server: RedisServer, raw: redis.Redis, ns: str
) -> None:
    # A waiter's BLPOP also ends, by design, every TTL/3 or socket_timeout - 0.5 s (to refresh
    # its queue record): make both longer than starting the waiters plus the quiet second.
    url = f"{redis_server.url}?namespace={ns}&ttl=90&socket_timeout=40"
    clients = [tenure.connect(url) for _ in range(6)]
    try:
        holder = clients[0].lock("herd")
        assert holder.acquire()
        runner = Runner()
        waiters = [c.lock("herd") for c in clients[1:]]
        order: list[int] = []
        for i, lock in enumerate(waiters):

            def wait(lock: tenure.Lock = lock, i: int = i) -> bool:
                got = lock.acquire(timeout=60)
                order.append(i)
                lock.release()
                return got

            runner.start(wait)
            wait_for(lambda n=i + 2: len(clients[0].contenders("herd")) == n)
        # Queued (their acquire script ran) is not yet waiting: let each send its BLPOP first.
        wait_for(lambda: int(raw.info("clients")["blocked_clients"]) == len(waiters))
        # A quiet second: queued waiters send nothing (no polling).
        quiet = calls(raw, "evalsha") + calls(raw, "blpop")
        time.sleep(1.0)  # a measurement window, not a wait for a condition
        assert calls(raw, "evalsha") + calls(raw, "blpop") == quiet
        holder.release()
        assert runner.join(60) == [True] * 5
        assert order == [0, 1, 2, 3, 4], "grants were not FIFO"
    finally:
        for c in clients:
            c.close()


def test_bad_credentials_unreachable_and_foreign_keys(
    redis_server: RedisServer, raw: redis.Redis, ns: str
) -> None:
    raw.acl_setuser("tenure-user", enabled=True, passwords=["+right-pw"], keys=["*"],
                    channels=["*"], commands=["+@all"])  # fmt: skip
    base = f"127.0.0.1:{redis_server.port}"
    good = f"redis://tenure-user:right-pw@{base}/0?namespace={ns}"
    with tenure.connect(good) as client, client.lock("acl") as lock:
        assert lock.token > 0
    with pytest.raises(ConfigurationError) as info:
        tenure.connect(f"redis://tenure-user:wrong-pw@{base}/0")
    assert base in str(info.value)
    assert "wrong-pw" not in str(info.value)
    with pytest.raises(BackendUnavailableError) as unreachable:
        tenure.connect("redis://u:secret-pw@127.0.0.1:1/0")
    assert "127.0.0.1:1" in str(unreachable.value)
    assert "secret-pw" not in str(unreachable.value)
    with pytest.raises(ConfigurationError, match="database"):
        tenure.connect(f"redis://{base}/999")
    raw.set(f"{ns}:{{lock/foreign}}:holder", "not a hash")
    with (
        tenure.connect(f"redis://{base}/0?namespace={ns}") as client,
        pytest.raises(BackendError, match="WRONGTYPE"),
    ):
        client.lock("foreign").acquire(blocking=False)
    assert raw.get(f"{ns}:{{lock/foreign}}:holder") == "not a hash"


def test_keys_of_one_lock_share_a_hash_tag(
    redis_server: RedisServer, raw: redis.Redis, ns: str
) -> None:
    with (
        tenure.connect(f"{redis_server.url}?namespace={ns}") as a,
        tenure.connect(f"{redis_server.url}?namespace={ns}") as b,
    ):
        lock = a.lock("tagged/name")
        assert lock.acquire()
        waiter = b.lock("tagged/name")
        runner = Runner()
        runner.start(lambda: waiter.acquire(timeout=30))
        wait_for(lambda: len(a.contenders("tagged/name")) == 2)
        keys = raw.keys(f"{ns}:*")
        assert len(keys) >= 4
        tags = {k.split("}")[0] for k in keys}  # everything up to the tag's end
        assert tags == {f"{ns}:{{lock/tagged/name"}
        lock.release()
        assert runner.join() == [True]
        waiter.release()


def test_thread_safe_use_of_one_client(redis_server: RedisServer, ns: str) -> None:
    with tenure.connect(f"{redis_server.url}?namespace={ns}") as client:
        count = 0
        guard = threading.Lock()
        inside = 0
        overlaps = 0

        def work() -> None:
            nonlocal count, inside, overlaps
            lock = client.lock("shared")
            for _ in range(100):
                with lock:
                    with guard:
                        inside += 1
                        overlaps += inside > 1
                    count += 1
                    with guard:
                        inside -= 1

        runner = Runner()
        for _ in range(4):
            runner.start(work)
        runner.join(60)
        assert count == 400
        assert overlaps == 0


def test_ttl_below_the_minimum_is_refused(redis_server: RedisServer, ns: str) -> None:
    url = f"{redis_server.url}?namespace={ns}"
    with pytest.raises(ConfigurationError, match=r"minimum of 0\.1 s"):
        tenure.connect(url, ttl=0.05)
    with tenure.connect(url) as client:
        with pytest.raises(ConfigurationError, match=r"minimum of 0\.1 s"):
            client.session(ttl=0.05)
        with pytest.raises(ConfigurationError, match=r"minimum of 0\.1 s"):
            client.lock("short", ttl=0.05).acquire()


def test_release_grants_directly_so_the_woken_waiter_sends_nothing_more(
    redis_server: RedisServer, raw: redis.Redis, ns: str
) -> None:
    url = f"{redis_server.url}?namespace={ns}"
    with tenure.connect(url) as a, tenure.connect(url) as b:
        first = a.lock("direct")
        assert first.acquire()
        first.release()  # the scripts are loaded now: no NOSCRIPT retry in the count below
        assert first.acquire()
        second = b.lock("direct")
        runner = Runner()
        runner.start(lambda: second.acquire(timeout=30))
        wait_for(lambda: len(a.contenders("direct")) == 2)
        before, old_token = calls(raw, "evalsha"), first.token
        first.release()
        assert runner.join(30) == [True]
        # The release script granted and pushed the token: the waiter ran no script of its own.
        assert calls(raw, "evalsha") - before == 1
        holder = a.holder("direct")
        assert holder is not None
        assert holder.token == second.token > old_token
        assert holder.acquired_at is not None
        second.release()
        assert a.holder("direct") is None


def test_a_waiter_that_leaves_after_being_granted_passes_the_grant_on(
    redis_server: RedisServer, raw: redis.Redis, ns: str
) -> None:
    from tenure import _redis_lua as lua

    p = f"{ns}:{{lock/given}}:"
    keys = [p + "holder"]
    acquire, release = raw.register_script(lua.ACQUIRE), raw.register_script(lua.RELEASE)
    leave = raw.register_script(lua.LEAVE)
    meta = '{"host": "h", "pid": 1, "value": null}'
    assert acquire(keys=keys, args=["A", 10000, meta, "q", "x", 0])[0] == 1
    assert acquire(keys=keys, args=["B", 10000, meta, "q", "x", 0])[0] == 0
    assert acquire(keys=keys, args=["C", 10000, meta, "q", "x", 0])[0] == 0
    assert release(keys=keys, args=["A", ""]) == 1
    # B is now the holder and its grant waits in its list; B gives up without reading it.
    assert raw.hget(p + "holder", "owner") == "B"
    token_b = int(raw.lrange(p + "s:B", 0, -1)[0].split()[0])
    assert leave(keys=keys, args=["B", ""]) == 1
    assert raw.hget(p + "holder", "owner") == "C"
    pushed = raw.lrange(p + "s:C", 0, -1)
    assert len(pushed) == 1
    token_c = int(pushed[0].split()[0])
    assert token_c > token_b
    # Nothing of B is left; C takes its grant (acquire finds it) and releases: only counters stay.
    assert acquire(keys=keys, args=["C", 10000, meta, "q", "x", 0])[:2] == [1, token_c]
    assert release(keys=keys, args=["C", ""]) == 1
    assert sorted(raw.keys(p + "*")) == sorted([p + "token", p + "seq"])


def test_one_queue_grants_the_run_of_readers_and_permits_in_order(
    raw: redis.Redis, ns: str
) -> None:
    """The release script grants exactly the waiters the rule allows: the run of readers at the
    head (not the reader behind the next writer), then that writer alone; a permit waiter when a
    permit comes back. Every grant is pushed, with a token from the one counter."""
    from tenure import _redis_lua as lua

    acquire, release = raw.register_script(lua.ACQUIRE), raw.register_script(lua.RELEASE)
    meta = '{"host": "h", "pid": 1, "value": null}'
    p = f"{ns}:{{rwlock/run}}:"
    keys = [p + "holder"]

    def ask(owner: str, mode: str, limit: int = 0) -> list[int]:
        return acquire(keys=keys, args=[owner, 10000, meta, "q", mode, limit])  # type: ignore[no-any-return]

    assert ask("W1", "x")[0] == 1
    for owner, mode in [("R1", "s"), ("R2", "s"), ("W2", "x"), ("R3", "s")]:
        assert ask(owner, mode)[0] == 0
    assert release(keys=keys, args=["W1", ""]) == 1
    granted = {o for o in ("R1", "R2", "W2", "R3") if raw.llen(p + "s:" + o)}
    assert granted == {"R1", "R2"}
    assert raw.zrange(p + "shared", 0, -1) == ["R1", "R2"]
    assert raw.zrange(p + "queue", 0, -1) == ["W2", "R3"]
    assert release(keys=keys, args=["R1", ""]) == 1
    assert not raw.llen(p + "s:W2")  # R2 still reads
    assert release(keys=keys, args=["R2", ""]) == 1
    assert raw.hget(p + "holder", "owner") == "W2"
    assert not raw.llen(p + "s:R3")
    tokens = [int(raw.lrange(p + "s:" + o, 0, 0)[0].split()[0]) for o in ("R1", "R2", "W2")]
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 3

    q = f"{ns}:{{semaphore/permits}}:"
    keys = [q + "holder"]
    assert ask("P1", "p", 2)[0] == 1
    assert ask("P2", "p", 2)[0] == 1
    assert ask("P3", "p", 2)[0] == 0
    assert ask("P4", "p", 3) == [-1, 2, 0]  # another limit: refused, nothing written
    assert raw.zrange(q + "queue", 0, -1) == ["P3"]
    assert release(keys=keys, args=["P1", ""]) == 1
    assert raw.llen(q + "s:P3") == 1
    assert sorted(raw.zrange(q + "shared", 0, -1)) == ["P2", "P3"]


def test_raise_never_confirms_two_contenders_with_one_token(raw: redis.Redis, ns: str) -> None:
    """Redlock's fencing step, on one master: two readers whose quorums picked the same maximum
    cannot both be raised to it here (the counter already reached it)."""
    from tenure import _redis_lua as lua

    acquire, raise_token = raw.register_script(lua.ACQUIRE), raw.register_script(lua.RAISE)
    meta = '{"host": "h", "pid": 1, "value": null}'
    p = f"{ns}:{{rwlock/fenced}}:"
    keys = [p + "holder"]
    first = acquire(keys=keys, args=["R1", 10000, meta, "n", "s", 0])[1]
    second = acquire(keys=keys, args=["R2", 10000, meta, "n", "s", 0])[1]
    assert second > first
    assert raise_token(keys=keys, args=["R1", second]) == 0  # R2 has that token here
    assert raw.hget(p + "h:R1", "token") == str(first)
    assert raise_token(keys=keys, args=["R1", second + 5]) == 1
    assert raw.hget(p + "h:R1", "token") == str(second + 5)
    assert raw.get(p + "token") == str(second + 5)
    assert raise_token(keys=keys, args=["nobody", second + 9]) == 0


def test_a_dead_readers_entry_expires_and_wakes_the_queued_writer(
    redis_server: RedisServer, raw: redis.Redis, ns: str
) -> None:
    """A reader that stops renewing (here: entries written by the script, never renewed) keeps
    the writer out until its TTL, and then the writer's BLPOP, timed to the reader's deadline,
    ends and its next acquire takes the lock: no polling in between."""
    from tenure import _redis_lua as lua

    acquire = raw.register_script(lua.ACQUIRE)
    meta = '{"host": "h", "pid": 1, "value": null}'
    keys = [f"{ns}:{{rwlock/dead}}:holder"]
    ttl_ms = 1500
    with tenure.connect(f"{redis_server.url}?namespace={ns}") as client:
        rw = client.rwlock("dead")
        started = time.monotonic()
        for owner in ("dead-1", "dead-2"):
            assert acquire(keys=keys, args=[owner, ttl_ms, meta, "", "s", 0])[0] == 1
        assert rw.write.acquire(blocking=False) is False  # (and the scripts are loaded)
        before = calls(raw, "evalsha")
        assert rw.write.acquire(timeout=30)
        waited = time.monotonic() - started
        print(f"writer granted {waited:.3f} s after the readers' entries were written")
        assert waited >= ttl_ms / 1000 - 0.1, "the writer got in while readers held"
        assert waited < ttl_ms / 1000 + 1.5
        # Its first acquire queued it; its wake at the readers' deadline granted it.
        assert calls(raw, "evalsha") - before <= 3
        holders = rw.holders()
        assert [(h.mode, h.token) for h in holders] == [("exclusive", rw.write.token)]
        rw.write.release()


def test_one_round_trip_renews_entries_of_every_mode(
    redis_server: RedisServer, raw: redis.Redis, ns: str
) -> None:
    with tenure.connect(f"{redis_server.url}?namespace={ns}") as client:
        session = client.session(ttl=30)
        lock, reader, writer = session.lock("m"), session.rwlock("r"), session.rwlock("w")
        permits = [session.semaphore("s", limit=3) for _ in range(2)]
        for held in [lock, reader.read, writer.write, *permits]:
            assert held.acquire(blocking=False)
        assert session._renew()  # the first one may load the script
        # Age the shared entries, then renew: one script call renews all five.
        shared = [f"{ns}:{{rwlock/r}}:shared", f"{ns}:{{semaphore/s}}:shared"]
        for key in shared:
            for owner in raw.zrange(key, 0, -1):
                raw.zadd(key, {owner: raw.zscore(key, owner) - 20_000})  # type: ignore[operator]
        before = calls(raw, "evalsha")
        assert session._renew()
        assert calls(raw, "evalsha") - before == 1
        now_ms = int(raw.time()[0]) * 1000
        for key in shared:
            for _, deadline in raw.zrange(key, 0, -1, withscores=True):
                assert deadline > now_ms + 25_000
        # A shared entry deleted behind its holder's back is reported by the next renewal.
        raw.zrem(shared[0], raw.zrange(shared[0], 0, 0)[0])
        assert session._renew()
        assert reader.read.lost.is_set()
        assert all(h.held for h in [lock, writer.write, *permits])
        session.close()


@pytest.fixture
def one_node_cluster(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis Cluster of one master that serves all 16384 slots: cross-slot scripts fail on it
    exactly as on a real cluster (CROSSSLOT), which is what the per-slot renewal is about."""
    server = RedisServer(tmp_path)
    server.argv += [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        str(tmp_path / "nodes.conf"),
    ]
    server.start()
    try:
        with redis.Redis(host=server.host, port=server.port, decode_responses=True) as r:
            r.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            wait_for(lambda: r.cluster("info")["cluster_state"] == "ok", 30)
        yield server
    finally:
        server.close()


def test_cluster_session_renews_locks_of_many_slots_one_script_per_slot(
    one_node_cluster: RedisServer,
) -> None:
    url = f"{one_node_cluster.url}?namespace=c&cluster=true"
    with (
        redis.Redis(host=one_node_cluster.host, port=one_node_cluster.port) as raw,
        tenure.connect(url) as client,
        tenure.connect(url) as other,
    ):
        session = client.session(ttl=30)
        locks = [session.lock(f"slot/{i}") for i in range(20)]  # 20 names, many slots
        for lock in locks:
            assert lock.acquire(blocking=False)
        slots = {raw.cluster("keyslot", f"c:{{lock/slot/{i}}}:holder") for i in range(20)}
        assert len(slots) > 1
        assert session._renew()  # the first one also loads the script (NOSCRIPT, reload)
        before = calls(raw, "evalsha")
        assert session._renew()
        assert calls(raw, "evalsha") - before == len(slots)
        assert all(lock.held for lock in locks)
        # A handoff on the cluster: granted directly to the waiter.
        waiter = other.lock("slot/0")
        runner = Runner()
        runner.start(lambda: waiter.acquire(timeout=30))
        wait_for(lambda: len(other.contenders("slot/0")) == 2)
        token = locks[0].token
        locks[0].release()
        assert runner.join(30) == [True]
        assert waiter.token > token
        holder = other.holder("slot/0")
        assert holder is not None
        assert holder.token == waiter.token
        waiter.release()
        session.close()
        assert client.holder("slot/1") is None
