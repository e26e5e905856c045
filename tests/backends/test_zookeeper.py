"""ZooKeeper-specific behaviour: expired sessions, leader killed, connection drops, ACLs."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

import tenure
from tenure import aio
from tenure.errors import BackendUnavailableError, ConfigurationError, LockLostError
from tests.contract import workers
from tests.contract.backends import zookeeper_stealer
from tests.contract.runners import AsyncRunner, Runner
from tests.servers import TcpProxy
from tests.servers.process import tcp_request
from tests.servers.zookeeper import ZooKeeperEnsemble

pytestmark = pytest.mark.server("zookeeper")
SPAWN = multiprocessing.get_context("spawn")


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    Runner.wait_for(condition, timeout)


@pytest.fixture
def ns() -> str:
    return "z" + uuid.uuid4().hex[:10]


@pytest.fixture
def raw(zookeeper_server: ZooKeeperEnsemble) -> Iterator[KazooClient]:
    zk = KazooClient(hosts=zookeeper_server.hosts)
    zk.start(10)
    yield zk
    zk.stop()
    zk.close()


def expire_session(hosts: str, lock: Any) -> None:
    """End ``lock``'s ZooKeeper session from outside: a second client joins the same session
    (its id and password) and closes it, which the server treats as the session's end."""
    client = lock._session._lease.data.client
    session_id, password = client.client_id
    intruder = KazooClient(hosts=hosts, client_id=(session_id, password))
    intruder.start(10)
    intruder.stop()  # closes the session for good
    intruder.close()


# -- the contract's core on a 3-node ensemble (sync and async) --------------------------


def test_ensemble_handoff_tokens_and_inspection(
    zookeeper_ensemble: ZooKeeperEnsemble, ns: str
) -> None:
    # Each client talks to a different node: grants, tokens and queues are ensemble-wide.
    urls = [f"zookeeper://{e}/chroot?namespace={ns}" for e in zookeeper_ensemble.endpoints]
    clients = [tenure.connect(url, ttl=2.0) for url in urls]
    try:
        first = clients[0].lock("jobs/one")
        assert first.acquire()
        first_token = first.token
        waiters = [c.lock("jobs/one") for c in clients[1:]]
        assert not waiters[0].acquire(blocking=False)
        runner = Runner()
        order: list[int] = []
        for i, lock in enumerate(waiters):

            def wait(lock: tenure.Lock = lock, i: int = i) -> int:
                assert lock.acquire(timeout=30)
                order.append(i)
                token = lock.token
                lock.release()
                return token

            runner.start(wait)
            wait_for(lambda n=i + 2: len(clients[0].contenders("jobs/one")) == n, 30)
        holder = clients[2].holder("jobs/one")
        assert holder is not None
        assert holder.token == first.token
        assert holder.pid == os.getpid()
        first.release()
        tokens = runner.join(60)
        assert order == [0, 1], "grants were not FIFO across the ensemble"
        assert first_token < tokens[0] < tokens[1]
        assert clients[1].holder("jobs/one") is None
    finally:
        for c in clients:
            c.close()


async def test_ensemble_async_waiter_is_woken(
    zookeeper_ensemble: ZooKeeperEnsemble, ns: str
) -> None:
    url = f"{zookeeper_ensemble.url}?namespace={ns}"
    async with await aio.connect(url) as a, await aio.connect(url) as b:
        lock = a.lock("async")
        assert await lock.acquire()
        token = lock.token
        other = b.lock("async")
        task = asyncio.ensure_future(other.acquire(timeout=30))

        async def queued() -> bool:
            return len(await a.contenders("async")) == 2

        await AsyncRunner.wait_for(queued, 30)
        await lock.release()
        assert await task
        assert other.token > token
        await other.release()


# -- sessions expired by force --------------------------------------------------------


def test_session_expired_while_holding_fires_lost_at_once(
    zookeeper_server: ZooKeeperEnsemble, ns: str
) -> None:
    url = f"{zookeeper_server.url}?namespace={ns}"
    ttl = 20.0  # long: only the LOST state, not the local deadline, can explain a quick `lost`
    with tenure.connect(url, ttl=ttl) as a, tenure.connect(url) as b:
        lock = a.lock("expired")
        assert lock.acquire()
        token = lock.token
        started = time.monotonic()
        expire_session(zookeeper_server.hosts, lock)
        assert lock.lost.wait(ttl / 2), "LOST did not fire lost"
        print(f"lost {time.monotonic() - started:.3f} s after the session was expired")
        with pytest.raises(LockLostError):
            lock.ensure_held()
        other = b.lock("expired")
        assert other.acquire(timeout=5), "the expired session's node was not deleted"
        assert other.token > token
        other.release()


def test_session_expired_while_waiting_fails_the_waiter(
    zookeeper_server: ZooKeeperEnsemble, ns: str
) -> None:
    url = f"{zookeeper_server.url}?namespace={ns}"
    ttl = 20.0
    with tenure.connect(url, ttl=ttl) as a, tenure.connect(url, ttl=ttl) as b:
        holder = a.lock("queue")
        assert holder.acquire()
        session = b.session(ttl=ttl)
        waiter = session.lock("queue")
        runner = Runner()
        runner.start(lambda: waiter.acquire(timeout=60))
        wait_for(lambda: len(a.contenders("queue")) == 2)
        started = time.monotonic()
        client = session._lease.data.client  # type: ignore[union-attr]
        intruder = KazooClient(hosts=zookeeper_server.hosts, client_id=client.client_id)
        intruder.start(10)
        intruder.stop()
        intruder.close()
        with pytest.raises(LockLostError):
            runner.join(ttl / 2)
        print(f"waiter failed {time.monotonic() - started:.3f} s after its session expired")
        assert session.lost.is_set()
        assert not waiter.held
        assert len(a.contenders("queue")) == 1  # its node went with the session
        holder.release()
        assert a.holder("queue") is None


# -- connection dropped and restored within the session timeout ------------------------


@pytest.fixture
def zk_proxy(zookeeper_server: ZooKeeperEnsemble) -> Iterator[TcpProxy]:
    node = zookeeper_server.nodes[0]
    proxy = TcpProxy("127.0.0.1", node.port)
    yield proxy
    proxy.close()


def test_connection_dropped_and_restored_within_the_session_keeps_the_lock(
    zk_proxy: TcpProxy, zookeeper_server: ZooKeeperEnsemble, ns: str
) -> None:
    ttl = 6.0
    url = zk_proxy.url_for("zookeeper") + f"?namespace={ns}"
    direct = f"{zookeeper_server.url}?namespace={ns}"
    with tenure.connect(url, ttl=ttl) as a, tenure.connect(direct) as b:
        lock = a.lock("kept")
        assert lock.acquire()
        token = lock.token
        client = lock._session._lease.data.client  # type: ignore[union-attr]
        session_id = client.client_id[0]
        # 1. Every connection severed: kazoo reconnects at once, in the same session.
        accepted = zk_proxy.accepted
        zk_proxy.sever()
        wait_for(lambda: zk_proxy.accepted > accepted and client.connected, ttl)
        # 2. The server unreachable for a third of the session timeout: the connection is cut
        # (SUSPENDED), reconnect attempts go unanswered, then the network heals. (The proxy's
        # blackhole swallows bytes, which TCP never does on a live connection, so the
        # connections are cut on both edges rather than resumed: ZooKeeper's protocol would see
        # a reply missing and kazoo would give up the connection for good.)
        zk_proxy.blackhole()
        zk_proxy.sever()
        wait_for(lambda: not client.connected, ttl)
        time.sleep(ttl / 3)  # the partition's length, not a wait for a condition
        assert not lock.lost.is_set(), "SUSPENDED alone must not lose the lock"
        zk_proxy.heal()
        accepted = zk_proxy.accepted
        zk_proxy.sever()  # a connect attempt swallowed by the blackhole would wait its timeout
        wait_for(lambda: zk_proxy.accepted > accepted and client.connected, ttl)
        lock.ensure_held()
        assert lock.held
        assert not lock.lost.is_set()
        assert lock.token == token
        assert client.client_id[0] == session_id, "a new session: the old one was lost"
        holder = b.holder("kept")
        assert holder is not None
        assert holder.token == token
        assert not b.lock("kept").acquire(blocking=False)
        lock.release()


def test_partition_past_the_session_timeout_loses_before_anyone_else_acquires(
    zk_proxy: TcpProxy, zookeeper_server: ZooKeeperEnsemble, ns: str
) -> None:
    ttl = 1.0
    url = zk_proxy.url_for("zookeeper") + f"?namespace={ns}"
    direct = f"{zookeeper_server.url}?namespace={ns}"
    with tenure.connect(url, ttl=ttl) as a, tenure.connect(direct, ttl=ttl) as b:
        lock = a.lock("cut")
        assert lock.acquire()
        token = lock.token
        lost_at: list[float] = []
        lock.on_lost(lambda _: lost_at.append(time.monotonic()))
        zk_proxy.blackhole()
        other = b.lock("cut")
        assert other.acquire(timeout=10 * ttl)
        granted_at = time.monotonic()
        assert lost_at, "the cut-off holder's lost did not fire"
        assert lost_at[0] < granted_at, "lost fired after another client acquired"
        assert other.token > token
        print(f"lost {1000 * (granted_at - lost_at[0]):.0f} ms before the takeover")
        other.release()
        zk_proxy.heal()


def test_waiter_cut_off_past_its_session_fails_and_is_never_granted(
    zk_proxy: TcpProxy, zookeeper_server: ZooKeeperEnsemble, ns: str
) -> None:
    ttl = 1.0
    url = zk_proxy.url_for("zookeeper") + f"?namespace={ns}"
    direct = f"{zookeeper_server.url}?namespace={ns}"
    with tenure.connect(direct, ttl=ttl) as a, tenure.connect(url, ttl=ttl) as b:
        holder = a.lock("queue")
        assert holder.acquire()
        session = b.session()
        waiter = session.lock("queue")
        runner = Runner()
        runner.start(lambda: waiter.acquire(timeout=30))
        wait_for(lambda: len(a.contenders("queue")) == 2)
        started = time.monotonic()
        zk_proxy.blackhole()
        try:
            with pytest.raises(LockLostError):
                runner.join(10 * ttl)
            print(f"cut-off waiter failed after {time.monotonic() - started:.3f} s")
            assert session.lost.is_set()
            assert not waiter.held
            # Its node goes when the server expires the session; then it is not in the way.
            wait_for(lambda: len(a.contenders("queue")) == 1, 10 * ttl)
        finally:
            zk_proxy.heal()
        holder.release()
        late = a.lock("queue")
        assert late.acquire(blocking=False)
        late.release()


# -- the ensemble's leader killed during contention (fenced resource) -------------------


def contend(url: str, fence: str, log: str, times: int) -> None:
    """Take the lock ``times`` times; inside, write to the fence and log the interval."""
    with tenure.connect(url, ttl=10.0) as client:
        lock = client.lock("contended")
        resource = workers.Fence(fence)
        for _ in range(times):
            with lock:
                start = time.monotonic_ns()
                accepted = resource.write(lock.token, f"pid-{os.getpid()}")
                time.sleep(0.002)
                with open(log, "a") as f:
                    f.write(f"{lock.token} {os.getpid()} {start} {time.monotonic_ns()} "
                            f"{int(accepted)}\n")  # fmt: skip


@pytest.mark.slow
def test_leader_killed_during_contention_no_overlap(
    fresh_zookeeper_ensemble: ZooKeeperEnsemble, tmp_path: Path, ns: str
) -> None:
    ensemble = fresh_zookeeper_ensemble
    url = f"{ensemble.url}?namespace={ns}"
    fence, log = str(tmp_path / "fence"), tmp_path / "log"
    log.touch()
    times = 40
    procs = [SPAWN.Process(target=contend, args=(url, fence, str(log), times)) for _ in range(4)]
    for p in procs:
        p.start()
    try:
        wait_for(lambda: len(log.read_text().splitlines()) >= 20, 60)
        leader = ensemble.wait_for_leader()
        leader.kill()
        killed_at = len(log.read_text().splitlines())
        wait_for(lambda: len(log.read_text().splitlines()) >= killed_at + 20, 60)
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
    finally:
        for p in procs:
            p.kill()
            p.join(10)
    rows = [line.split() for line in log.read_text().splitlines()]
    assert len(rows) == 4 * times
    assert all(row[4] == "1" for row in rows), "the fence refused a stale token"
    spans = sorted((int(r[2]), int(r[3]), int(r[0])) for r in rows)
    overlaps = sum(1 for x, y in itertools.pairwise(spans) if y[0] < x[1])
    assert overlaps == 0
    tokens = [s[2] for s in spans]
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)


# -- configuration errors, ACLs, unreachable servers ------------------------------------


def test_unreachable_server_names_the_address_not_the_password() -> None:
    with pytest.raises(BackendUnavailableError) as info:
        tenure.connect("zk://u:secret-pw@127.0.0.1:1/app?connect_timeout=1")
    assert "127.0.0.1:1" in str(info.value)
    assert "secret-pw" not in str(info.value)
    assert "secret-pw" not in repr(info.value)


def test_bad_urls_and_options_are_refused(zookeeper_server: ZooKeeperEnsemble) -> None:
    base = zookeeper_server.url
    with pytest.raises(ConfigurationError, match="chroot"):
        tenure.connect(base + "/a//b")
    with pytest.raises(ConfigurationError, match="use_ssl"):
        tenure.connect(base + "?ca=/nonexistent")
    with pytest.raises(ConfigurationError, match="user:password"):
        tenure.connect(base.replace("://", "://justuser@"))
    with pytest.raises(ConfigurationError, match="request_timeout"):
        tenure.connect(base + "?request_timeout=-1")


def test_ttl_the_server_would_change_is_refused(
    zookeeper_server: ZooKeeperEnsemble, ns: str
) -> None:
    url = f"{zookeeper_server.url}?namespace={ns}"
    with pytest.raises(ConfigurationError, match=r"minimum of 0\.5 s"):
        tenure.connect(url, ttl=0.2)
    # maxSessionTimeout is 60 s: the server would silently shorten a 100 s session.
    with (
        tenure.connect(url) as client,
        pytest.raises(ConfigurationError, match=r"offered 60\.0 s"),
    ):
        client.lock("long", ttl=100.0).acquire()


def test_acls_keep_other_identities_out(
    zookeeper_server: ZooKeeperEnsemble, raw: KazooClient, ns: str
) -> None:
    hosts = zookeeper_server.hosts
    good = f"zk://alice:right-pw@{hosts}/secure?namespace={ns}"
    with tenure.connect(good) as client:
        lock = client.lock("acl")
        assert lock.acquire()
        # Anyone may read the queue (world read)...
        parent = f"/secure/{ns}/lock/acl"
        (child,) = raw.get_children(parent)
        assert b"alice" not in raw.get(f"{parent}/{child}")[0]  # owner metadata, no secret
        # ...but not delete our node, nor queue behind it.
        with pytest.raises(NoAuthError):
            raw.delete(f"{parent}/{child}")
        wrong = f"zk://alice:wrong-pw@{hosts}/secure?namespace={ns}"
        with pytest.raises(ConfigurationError) as info, tenure.connect(wrong) as bad:
            bad.lock("acl").acquire(blocking=False)
        assert "wrong-pw" not in str(info.value)
        assert hosts.split(",")[0] in str(info.value)
        lock.ensure_held()
        # The steal helper with the right credentials can.
        zookeeper_stealer(hosts, f"/secure/{ns}", auth="alice:right-pw")("acl")
        assert lock.lost.wait(10)


# -- costs: one round trip renews everything; one watch per waiter ---------------------


def _received(ensemble: ZooKeeperEnsemble) -> int:
    for line in ensemble.nodes[0].srvr().splitlines():
        if line.startswith("Received:"):
            return int(line.split(":")[1])
    raise AssertionError("no Received: line in srvr")


def test_one_request_renews_a_thousand_locks(zookeeper_server: ZooKeeperEnsemble, ns: str) -> None:
    with tenure.connect(f"{zookeeper_server.url}?namespace={ns}") as client:
        session = client.session(ttl=30)
        locks = [session.lock(f"many/{i}") for i in range(1000)]
        for lock in locks:
            assert lock.acquire(blocking=False)
        lease_client = session._lease.data.client  # type: ignore[union-attr]
        lease_client.exists("/")  # every earlier request of the session has been answered
        before = _received(zookeeper_server)
        assert session._renew()
        # One multi (a few packets of other clients' pings may land in the window).
        assert _received(zookeeper_server) - before <= 2
        zookeeper_stealer(zookeeper_server.hosts, f"/{ns}")("many/7")
        assert session._renew()
        assert locks[7].lost.is_set()
        assert all(lock.held for i, lock in enumerate(locks) if i != 7)
        session.close()


def test_each_waiter_watches_only_its_predecessor(
    zookeeper_server: ZooKeeperEnsemble, ns: str
) -> None:
    url = f"{zookeeper_server.url}?namespace={ns}"
    clients = [tenure.connect(url) for _ in range(6)]
    try:
        holder = clients[0].lock("herd")
        assert holder.acquire()
        runner = Runner()
        for i, c in enumerate(clients[1:]):
            lock = c.lock("herd")

            def wait(lock: tenure.Lock = lock) -> bool:
                got = lock.acquire(timeout=60)
                lock.release()
                return got

            runner.start(wait)
            wait_for(lambda n=i + 2: len(clients[0].contenders("herd")) == n)
        parent = f"/{ns}/lock/herd/"

        def watches() -> dict[str, int]:
            counts: dict[str, int] = {}
            path = ""
            reply = tcp_request(zookeeper_server.nodes[0].port, b"wchp").decode()
            for line in reply.splitlines():
                if line.startswith("/"):
                    path = line.strip()
                elif line.strip().startswith("0x") and path.startswith(parent):
                    counts[path] = counts.get(path, 0) + 1
            return counts

        # 5 waiters: one watch each, on its predecessor; a release fires exactly one.
        wait_for(lambda: sum(watches().values()) == 5, 10)
        assert all(n == 1 for n in watches().values()), watches()
        holder.release()
        assert runner.join(60) == [True] * 5
    finally:
        for c in clients:
            c.close()


# -- shared modes: who watches whom, and the semaphore's limit ---------------------------


def _watches_by_session(ensemble: ZooKeeperEnsemble, parent: str) -> dict[str, set[str]]:
    """The children of ``parent`` each session watches (session id in hex -> node names)."""
    found: dict[str, set[str]] = {}
    session = ""
    for line in tcp_request(ensemble.nodes[0].port, b"wchc").decode().splitlines():
        if line.startswith("0x"):
            session = line.strip()[2:]
        elif line.strip().startswith(parent + "/"):
            found.setdefault(session, set()).add(line.strip()[len(parent) + 1 :])
    return found


class _Queue:
    """Contenders queued one after the other, each in its own session, holding once granted
    until ``done`` is set; ``calls[i]`` records what contender i's session asked about the
    queue's nodes from the moment ``count()`` is called."""

    def __init__(self, client: tenure.Client, raw: KazooClient, parent: str) -> None:
        self.client, self.raw, self.parent = client, raw, parent
        self.sessions: list[tenure.Session] = []
        self.done = threading.Event()
        self.runner = Runner()
        self.calls: list[list[str]] = []

    def add(self, make: Any) -> Any:
        session = self.client.session()
        self.sessions.append(session)
        lock = make(session)
        queued = len(self.raw.get_children(self.parent)) + 1

        def hold() -> bool:
            got = bool(lock.acquire(timeout=60))
            self.done.wait(60)
            if lock.held:  # (the test may have released it)
                lock.release()
            return got

        self.runner.start(hold)
        wait_for(lambda: len(self.raw.get_children(self.parent)) == queued)
        return lock

    def ids(self) -> list[str]:
        return [session._lease.id for session in self.sessions]  # type: ignore[union-attr]

    def count(self) -> None:
        for session in self.sessions:
            client = session._lease.data.client  # type: ignore[union-attr]
            calls: list[str] = []
            self.calls.append(calls)
            for method in ("get_children_async", "get_async", "set_async"):
                setattr(client, method, self._counted(getattr(client, method), method, calls))

    def _counted(self, call: Any, method: str, calls: list[str]) -> Any:
        def counted(path: str, *args: Any, **kwargs: Any) -> Any:
            if path.startswith(self.parent):
                calls.append(method.removesuffix("_async"))
            return call(path, *args, **kwargs)

        return counted

    def nodes(self) -> list[str]:
        return sorted(self.raw.get_children(self.parent), key=lambda c: c.rpartition("-")[2])


def test_a_release_wakes_one_semaphore_waiter(
    zookeeper_server: ZooKeeperEnsemble, raw: KazooClient, ns: str
) -> None:
    """The first waiter watches every holder, each later waiter only the one before it. A
    release grants the first waiter without a listing; its promotion wakes the second, which
    becomes the first waiter; nobody else hears of it."""
    url = f"{zookeeper_server.url}?namespace={ns}"
    with tenure.connect(url) as a, tenure.connect(url) as b, tenure.connect(url) as c:
        holders = [a.semaphore("gpu", limit=2), b.semaphore("gpu", limit=2)]
        for sem in holders:
            assert sem.acquire()
        queue = _Queue(c, raw, f"/{ns}/semaphore/gpu")
        waiters = [queue.add(lambda s: s.semaphore("gpu", limit=2)) for _ in range(4)]
        nodes, ids = queue.nodes(), queue.ids()
        assert all("-permit2-" in node for node in nodes)

        def watching(*watched: set[str]) -> bool:
            expected = {session: w for session, w in zip(ids, watched, strict=True) if w}
            return _watches_by_session(zookeeper_server, queue.parent) == expected

        wait_for(lambda: watching(set(nodes[:2]), {nodes[2]}, {nodes[3]}, {nodes[4]}))
        queue.count()
        holders[0].release()
        wait_for(lambda: waiters[0].held)
        # The new first waiter watches both holders; the old one's watch on the other holder
        # stays until that one goes (it then fires once, on nothing).
        wait_for(lambda: watching({nodes[1]}, {nodes[1], nodes[2]}, {nodes[3]}, {nodes[4]}))
        assert queue.calls[0] == ["set"]  # granted without listing; promoted
        assert queue.calls[1] == ["get_children", "get", "get"]
        assert queue.calls[2] == queue.calls[3] == []  # never woken
        assert not any(w.held for w in waiters[1:])
        holders[1].release()
        wait_for(lambda: waiters[1].held)
        wait_for(lambda: watching(set(), {nodes[2]}, {nodes[2], nodes[3]}, {nodes[4]}))
        assert queue.calls[1] == ["get_children", "get", "get", "set"]
        assert queue.calls[2] == ["get_children", "get", "get"]
        assert queue.calls[3] == []
        queue.done.set()
        assert queue.runner.join(60) == [True] * 4


def test_readers_watch_the_newest_writer_before_them(
    zookeeper_server: ZooKeeperEnsemble, raw: KazooClient, ns: str
) -> None:
    """Queue: reader (holds), writer, reader, reader, writer, reader. Each writer watches the
    node before it, each reader the newest writer before it; a writer's release grants the
    run of readers behind it (their one watch each fires) and wakes no one else."""
    url = f"{zookeeper_server.url}?namespace={ns}"
    with tenure.connect(url) as a, tenure.connect(url) as b:
        first = a.rwlock("catalog")
        assert first.read.acquire()
        queue = _Queue(b, raw, f"/{ns}/rwlock/catalog")
        sides = ["write", "read", "read", "write", "read"]
        locks = [
            queue.add(lambda s, side=side: getattr(s.rwlock("catalog"), side)) for side in sides
        ]
        nodes, ids = queue.nodes(), queue.ids()
        assert [node.split("-")[1] for node in nodes] == ["read", *sides]
        watched = [{nodes[0]}, {nodes[1]}, {nodes[1]}, {nodes[3]}, {nodes[4]}]
        wait_for(
            lambda: (
                _watches_by_session(zookeeper_server, queue.parent)
                == dict(zip(ids, watched, strict=True))
            )
        )
        queue.count()
        first.read.release()
        wait_for(lambda: locks[0].held)
        assert queue.calls == [[], [], [], [], []]  # granted without a listing; nobody else
        assert not any(lock.held for lock in locks[1:])
        assert [h.mode for h in b.rwlock("catalog").holders()] == ["exclusive"]
        # The writer's release: both readers behind it are granted, nobody else is woken.
        locks[0].release()
        wait_for(lambda: locks[1].held and locks[2].held)
        assert queue.calls[1:] == [[], [], [], []]
        assert not locks[3].held
        assert not locks[4].held
        queue.done.set()
        results = queue.runner.join(60)
        assert results == [True] * 5


def test_a_limit_mismatch_leaves_no_node_behind(
    zookeeper_server: ZooKeeperEnsemble, raw: KazooClient, ns: str
) -> None:
    url = f"{zookeeper_server.url}?namespace={ns}"
    parent = f"/{ns}/semaphore/quota"
    with tenure.connect(url) as a, tenure.connect(url) as b:
        held = a.semaphore("quota", limit=2)
        assert held.acquire()
        for blocking in (True, False):
            with pytest.raises(ConfigurationError, match=r"limit 2.*limit 3"):
                b.semaphore("quota", limit=3).acquire(blocking=blocking, timeout=5)
            assert len(raw.get_children(parent)) == 1
        held.release()
        # A contender admitted under the limit of an older node that has left since: the
        # semaphore is still in use with limit 3, so a newcomer with limit 2 is refused even
        # though its node is now the oldest.
        admitted = "f" * 32 + "-permit3-9999999999"
        raw.create(f"{parent}/{admitted}", ephemeral=True)
        with pytest.raises(ConfigurationError, match=r"limit 3.*limit 2"):
            a.semaphore("quota", limit=2).acquire(blocking=False)
        assert raw.get_children(parent) == [admitted]
        raw.delete(f"{parent}/{admitted}")
        sem = b.semaphore("quota", limit=3)  # empty: any limit goes
        assert sem.acquire(blocking=False)
        sem.release()


def test_forked_child_inspects_through_its_own_connection(
    zookeeper_server: ZooKeeperEnsemble, ns: str
) -> None:
    with tenure.connect(f"{zookeeper_server.url}?namespace={ns}") as client:
        lock = client.lock("forked")
        assert lock.acquire()
        pid = os.fork()
        if pid == 0:  # child: kazoo's threads are gone; holder() must still work
            code = 1
            try:
                holder = client.holder("forked")
                code = 0 if holder is not None and holder.pid == os.getppid() else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        lock.ensure_held()
        lock.release()


def test_a_waiter_never_watches_a_node_that_left_unseen(
    zookeeper_server: ZooKeeperEnsemble, raw: KazooClient, ns: str
) -> None:
    """Queue: holder, w0, w1, w2 (a chain of plain-lock waiters). When w0 is deleted after its
    tenure, w1's picture still shows the holder, which left unseen: w1 must list the queue once
    and be granted, not first set a watch on the gone holder (a wasted round trip and wake-up
    per grant)."""
    url = f"{zookeeper_server.url}?namespace={ns}"
    with tenure.connect(url) as a, tenure.connect(url) as b:
        holder = a.lock("chain")
        assert holder.acquire()
        queue = _Queue(b, raw, f"/{ns}/lock/chain")
        locks = [queue.add(lambda s: s.lock("chain")) for _ in range(3)]
        # Count from when every waiter watches its predecessor (its node alone is not enough:
        # the watch is set just after).
        wait_for(
            lambda: set(queue.ids()) <= set(_watches_by_session(zookeeper_server, queue.parent))
        )
        queue.count()
        holder.release()
        wait_for(lambda: locks[0].held)
        assert queue.calls == [[], [], []]  # the next in line: granted without a listing
        locks[0].release()
        wait_for(lambda: locks[1].held)
        assert queue.calls[1] == ["get_children"], queue.calls
        assert queue.calls[2] == []
        queue.done.set()
        assert queue.runner.join(60) == [True] * 3
