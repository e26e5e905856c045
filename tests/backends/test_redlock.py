"""Redlock on 5 independent masters: minority down or paused, majority down, a master restarted
empty while the lock is held, lost replies from one master, fencing tokens across diverged
counters."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import tenure
from tenure import NoRetry
from tenure._async.backends.redlock import quorum, validity
from tenure.errors import BackendUnavailableError, ConfigurationError
from tests.backends.fencing import FencedResource
from tests.contract.runners import Runner
from tests.servers import RedisServer, TcpProxy, redlock_url, start_redis_masters

pytestmark = pytest.mark.server("redis")


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    Runner.wait_for(condition, timeout)


@pytest.fixture
def masters() -> Iterator[list[RedisServer]]:
    """Five fresh masters (these tests kill, pause and restart them)."""
    servers = start_redis_masters(5)
    try:
        yield servers
    finally:
        for server in servers:
            if server.paused:
                server.resume()
            server.close()


@pytest.fixture
def ns() -> str:
    return "rl" + uuid.uuid4().hex[:10]


def raw(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, decode_responses=True)


def server_us(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 10**6 + int(micros)


def leftovers(servers: list[RedisServer], ns: str) -> dict[str, list[str]]:
    """Keys of ``ns`` on each live master other than the permanent counters."""
    found: dict[str, list[str]] = {}
    for server in servers:
        if not server.alive or server.paused:
            continue
        with raw(server) as r:
            keys = [k for k in r.keys(f"{ns}:*") if not k.endswith((":token", ":seq"))]
        if keys:
            found[server.endpoint] = sorted(keys)
    return found


def test_quorum_and_validity_arithmetic() -> None:
    assert [quorum(n) for n in (3, 4, 5, 6, 7)] == [2, 3, 3, 4, 4]
    assert [quorum(5, limit) for limit in (1, 2, 3, 4, 9)] == [3, 4, 4, 5, 5]
    for n in range(3, 10):
        for limit in range(1, 12):
            q = quorum(n, limit)
            # limit + 1 holders on q masters each would need a master holding limit + 1...
            assert (limit + 1) * q > n * limit
            # ... and one master fewer would not (q is the least such quorum).
            assert (limit + 1) * (q - 1) <= n * limit
    assert validity(10.0, 0.5, 0.01) == pytest.approx(10.0 - 0.5 - 0.1 - 0.002)
    assert validity(1.0, 1.0, 0.01) < 0


def test_url_needs_three_masters_and_a_sane_ttl(masters: list[RedisServer]) -> None:
    with pytest.raises(ConfigurationError, match="at least 3"):
        tenure.connect("redlock://127.0.0.1:1,127.0.0.1:2")
    url = redlock_url(masters) + "?node_timeout=0.4"
    with tenure.connect(url) as client, pytest.raises(ConfigurationError, match="too short"):
        client.lock("short", ttl=0.6).acquire()


def test_minority_killed_and_paused_still_works_with_zero_overlaps(
    masters: list[RedisServer], ns: str
) -> None:
    url = f"{redlock_url(masters)}?namespace={ns}"
    masters[0].kill()
    masters[1].pause()
    resource = FencedResource()
    inside = 0
    overlaps = 0
    guard = threading.Lock()

    def work(client: tenure.Client) -> int:
        nonlocal inside, overlaps
        lock = client.lock("minority")
        for _ in range(5):
            with lock:
                with guard:
                    inside += 1
                    overlaps += inside > 1
                assert resource.write(lock.token)
                with guard:
                    inside -= 1
        return 5

    clients = [tenure.connect(url, ttl=5.0) for _ in range(3)]
    try:
        runner = Runner()
        for client in clients:
            runner.start(lambda client=client: work(client))
        assert runner.join(120) == [5, 5, 5]
    finally:
        for client in clients:
            client.close()
    assert overlaps == 0
    assert resource.rejected == []
    assert len(resource.accepted) == 15
    masters[1].resume()
    assert leftovers(masters, ns) == {}


def test_majority_down_fails_fast_and_leaves_nothing(masters: list[RedisServer], ns: str) -> None:
    url = f"{redlock_url(masters)}?namespace={ns}"
    with tenure.connect(url, retry=NoRetry()) as client:
        lock = client.lock("majority")
        assert lock.acquire(blocking=False)  # everything up: fine
        lock.release()
        for server in masters[:3]:
            server.kill()
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError) as info:
            lock.acquire(timeout=30)
        elapsed = time.monotonic() - started
        print(f"majority down: BackendUnavailableError after {elapsed:.3f} s")
        assert elapsed < 2.0
        assert "only 2 of 5" in str(info.value)
        assert masters[0].endpoint in str(info.value)
        assert not lock.held
    assert leftovers(masters, ns) == {}
    with pytest.raises(BackendUnavailableError, match="only 2 of 5"):
        tenure.connect(url)


def test_master_restarted_empty_while_held_fenced_resource_rejects_the_stale_holder(
    masters: list[RedisServer], ns: str
) -> None:
    url = f"{redlock_url(masters)}?namespace={ns}"
    resource = FencedResource()
    with tenure.connect(url, ttl=3.0) as a, tenure.connect(url, ttl=3.0) as b:
        # A holds masters 0, 1, 2 only (3 and 4 are paused meanwhile).
        masters[3].pause()
        masters[4].pause()
        first = a.lock("restarted")
        assert first.acquire(timeout=10)
        masters[3].resume()
        masters[4].resume()
        # Master 2 restarts without persistence: A now holds only 0 and 1, no longer a quorum.
        masters[2].restart()
        second = b.lock("restarted")
        assert second.acquire(timeout=10), "B could not take the quorum 2, 3, 4"
        # Two clients believe they hold the lock; the fencing token settles it.
        assert second.token > first.token
        assert resource.write(second.token)
        assert not resource.write(first.token), "the stale holder's write was accepted"
        # And A learns at its next renewal that it lost the lock.
        assert first.lost.wait(10)
        second.release()


def test_masters_restored_with_older_counters_still_hand_out_larger_tokens(
    masters: list[RedisServer], ns: str
) -> None:
    """A quorum of masters comes back from a snapshot older than the last grants (persistence
    that lost recent writes): their counters are behind the last token. A plain INCR would hand
    out a token already given; max(counter + 1, clock) does not."""
    url = f"{redlock_url(masters)}?namespace={ns}"
    counter = f"{ns}:{{lock/restored}}:token"
    tokens = []
    with tenure.connect(url) as client:
        lock = client.lock("restored")
        for _ in range(3):
            assert lock.acquire(timeout=10)
            tokens.append(lock.token)
            lock.release()
        for server in masters[:3]:
            with raw(server) as r:
                r.save()  # the snapshot they will come back from
        for _ in range(5):
            assert lock.acquire(timeout=10)
            tokens.append(lock.token)
            lock.release()
    assert tokens == sorted(set(tokens))
    for server in masters[3:]:
        server.kill()  # the masters that have the newer counters are gone
    for server in masters[:3]:
        server.kill()
        server.start()
        with raw(server) as r:
            assert int(r.get(counter)) <= tokens[2], "not restored from the older snapshot"
            # The documented assumption: the restart took longer than Redlock's clock step
            # (10 ms) plus the clock offset; here it takes about that, so make sure of it.
            wait_for(lambda r=r: server_us(r) > tokens[-1] + 10_000)
    with tenure.connect(url) as client:
        lock = client.lock("restored")
        assert lock.acquire(timeout=10)
        assert lock.token > max(tokens), "a token went backwards after the restore"
        lock.release()


def test_fencing_tokens_increase_across_holders_whose_quorums_diverge(
    masters: list[RedisServer], ns: str
) -> None:
    """Counters on the masters differ; a grant takes the max of its quorum and raises the others
    to it, so a later quorum that shares one master with it continues above it."""
    url = f"{redlock_url(masters)}?namespace={ns}"
    counter = f"{ns}:{{lock/fenced}}:token"
    with raw(masters[0]) as r:
        seconds, micros = r.time()
    high = seconds * 10**6 + micros + 10**12  # far ahead of the clocks (tokens track them)
    for i, server in enumerate(masters):
        with raw(server) as r:
            r.set(counter, high if i == 0 else 1000)
    with tenure.connect(url, ttl=2.0) as client:
        lock = client.lock("fenced")
        masters[3].pause()
        masters[4].pause()
        assert lock.acquire(timeout=10)  # quorum 0, 1, 2
        first = lock.token
        assert first == high + 1
        for server in masters[1:3]:
            with raw(server) as r:
                assert int(r.get(counter)) == first, "the quorum was not raised to the token"
        lock.release()
        masters[3].resume()
        masters[4].resume()
        masters[0].pause()  # the master with the high counter is gone
        assert lock.acquire(timeout=10)  # quorum among 1, 2, 3, 4
        assert lock.token > first
        lock.release()
        masters[0].resume()
    # The acquire sent to the paused master 0 runs when it resumes, after our release there
    # timed out: an entry on a minority master that nobody holds; it expires after the TTL.
    wait_for(lambda: leftovers(masters, ns) == {}, 2.0 + 5.0)


def test_lost_replies_from_one_master(masters: list[RedisServer], ns: str) -> None:
    proxy = TcpProxy(masters[0].host, masters[0].port)
    try:
        endpoints = [proxy.endpoint] + [m.endpoint for m in masters[1:]]
        url = "redlock://" + ",".join(endpoints) + f"?namespace={ns}"
        with tenure.connect(url) as a, tenure.connect(url) as b:
            lock = a.lock("dropped")
            proxy.drop_next_reply()  # master 0 grants, its reply is lost
            assert lock.acquire(timeout=10)
            holder = b.holder("dropped")
            assert holder is not None
            assert holder.token == lock.token
            other = b.lock("dropped")
            assert not other.acquire(blocking=False)
            proxy.drop_next_reply()  # master 0 releases, its reply is lost
            lock.release()
            assert other.acquire(timeout=10)
            assert other.token > lock_token_of(holder)
            other.release()
        proxy.heal()
    finally:
        proxy.close()
    assert leftovers(masters, ns) == {}


def lock_token_of(holder: tenure.Holder) -> int:
    return holder.token


def test_a_grant_leaves_the_queues_of_masters_that_did_not_grant(
    masters: list[RedisServer], ns: str
) -> None:
    """Else its stale entry heads that master's queue and swallows every wake-up there."""
    p = f"{ns}:{{lock/queued}}:"
    with raw(masters[4]) as r:  # master 4 is held by someone else (a minority)
        r.hset(p + "holder", mapping={"owner": "x" * 32, "token": 1, "meta": "{}", "at": 0})
        r.pexpire(p + "holder", 60_000)
    url = f"{redlock_url(masters)}?namespace={ns}"
    with tenure.connect(url) as client:
        lock = client.lock("queued")
        assert lock.acquire(timeout=10)  # blocking: its attempt queues where not granted
        with raw(masters[4]) as r:
            assert r.zcard(p + "queue") == 0
            assert r.keys(p + "w:*") == []
        lock.release()
    with raw(masters[4]) as r:
        r.delete(p + "holder")
    assert leftovers(masters, ns) == {}


def test_a_queued_writer_is_not_starved_by_later_readers(
    masters: list[RedisServer], ns: str
) -> None:
    """A reader lets a queued writer (that arrived before it) go first on every master:
    readers that keep overlapping cannot keep the writer out."""
    url = f"{redlock_url(masters)}?namespace={ns}"
    with tenure.connect(url) as a, tenure.connect(url) as b, tenure.connect(url) as c:
        first, writer, late = a.rwlock("starve"), b.rwlock("starve"), c.rwlock("starve")
        assert first.read.acquire(blocking=False)
        read_token = first.read.token
        runner = Runner()
        runner.start(lambda: writer.write.acquire(timeout=30))
        wait_for(lambda: [h.waiting for h in a.rwlock("starve").contenders()] == [False, True])
        assert not late.read.acquire(blocking=False)  # the writer is queued before it
        first.read.release()
        assert runner.join(30) == [True]
        write_token = writer.write.token
        assert write_token > read_token
        assert not late.read.acquire(blocking=False)
        writer.write.release()
        assert late.read.acquire(blocking=False)
        assert late.read.token > write_token
        late.read.release()
    assert leftovers(masters, ns) == {}


def test_a_releaser_asking_again_queues_behind_the_waiter(
    masters: list[RedisServer], ns: str
) -> None:
    """No barging: the waiter's arrival is the same number on every master, each master lets
    only the earliest live waiter take the key, so a releaser asking again at once (the loop
    that starved 7 of 8 processes: fairness 0.23) is refused and queues behind it."""
    url = f"{redlock_url(masters)}?namespace={ns}"
    p = f"{ns}:{{lock/barge}}:"
    with tenure.connect(url) as a, tenure.connect(url) as b:
        mine, theirs = a.lock("barge"), b.lock("barge")
        for _ in range(3):
            assert mine.acquire(timeout=10)
            runner = Runner()
            runner.start(lambda: theirs.acquire(timeout=30))
            wait_for(lambda: [h.waiting for h in a.contenders("barge")] == [False, True])
            scores = set()
            for server in masters:
                with raw(server) as r:
                    scores.add(tuple(r.zrange(p + "queue", 0, -1, withscores=True)))
            assert len(scores) == 1, scores  # one order on every master
            mine.release()
            assert not mine.acquire(blocking=False)  # the waiter is first, on every master
            assert runner.join(30) == [True]
            runner = Runner()
            runner.start(lambda: mine.acquire(timeout=30))  # queues behind the holder now
            wait_for(lambda: [h.waiting for h in a.contenders("barge")] == [False, True])
            their_token = theirs.token
            theirs.release()
            assert runner.join(30) == [True]
            assert mine.token > their_token
            mine.release()
    assert leftovers(masters, ns) == {}


def test_a_permit_needs_its_larger_quorum(masters: list[RedisServer], ns: str) -> None:
    """With majorities, 3 holders of a limit-2 semaphore could each hold a different 3 of 5
    masters; so a permit of limit 2 needs 4: with two masters down it is unavailable (and says
    so), while a lock, an rwlock and a limit-1 semaphore still work on the majority."""
    url = f"{redlock_url(masters)}?namespace={ns}"
    masters[3].kill()
    with tenure.connect(url, retry=NoRetry()) as client:
        one = client.semaphore("gpu", limit=2)
        assert one.acquire(blocking=False)  # 4 of 5 masters answer: enough
        masters[4].kill()
        with pytest.raises(BackendUnavailableError, match="quorum 4"):
            client.semaphore("gpu", limit=2).acquire(blocking=False)
        for held in [client.lock("m"), client.rwlock("r").read, client.semaphore("one", limit=1)]:
            assert held.acquire(blocking=False)
            held.release()


def test_bad_credentials_and_options(masters: list[RedisServer]) -> None:
    hosts = ",".join(m.endpoint for m in masters)
    with pytest.raises(ConfigurationError) as info:
        tenure.connect(f"redlock://nobody:wrong-pw@{hosts}/0")
    assert "wrong-pw" not in str(info.value)
    assert "rejected the credentials" in str(info.value)
    with pytest.raises(ConfigurationError, match="drift_factor must be a number"):
        tenure.connect(f"redlock://{hosts}?drift_factor=tiny")
    with pytest.raises(ConfigurationError, match="rediss"):
        tenure.connect(f"redlock://{hosts}?ssl_ca_certs=/x")
