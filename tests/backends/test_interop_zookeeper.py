"""tenure and kazoo (and Curator's layout) on one ZooKeeper lock: mutual exclusion both ways,
foreign contenders shown as such, and a foreign node of no known layout kept on the safe side.

The same lock from kazoo: ``zk.Lock("<chroot>/<namespace>/lock/<quoted name>", identifier,
extra_lock_patterns=["-lock-"])`` (the pattern makes kazoo see tenure's nodes).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient

import tenure
from tests.contract.runners import Runner
from tests.servers.zookeeper import ZooKeeperEnsemble

pytestmark = pytest.mark.server("zookeeper")

#: What kazoo's recipes need to see tenure's contenders (tenure's node mark).
TENURE_PATTERN = "-lock-"


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    Runner.wait_for(condition, timeout)


@pytest.fixture
def ns() -> str:
    return "i" + uuid.uuid4().hex[:10]


@pytest.fixture
def zk(zookeeper_server: ZooKeeperEnsemble) -> Iterator[KazooClient]:
    client = KazooClient(hosts=zookeeper_server.hosts)
    client.start(10)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def url(zookeeper_server: ZooKeeperEnsemble, ns: str) -> str:
    return f"{zookeeper_server.url}?namespace={ns}"


@pytest.fixture
def client(url: str) -> Iterator[tenure.Client]:
    with tenure.connect(url, ttl=2.0) as c:
        yield c


def path_of(ns: str, name: str, kind: str = "lock") -> str:
    """The lock node tenure uses for ``name`` (no chroot in the test URL): the name quoted with
    ``urllib.parse.quote(name, safe="")``."""
    return f"/{ns}/{kind}/{name.replace('/', '%2F')}"


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def test_tenure_waits_for_a_kazoo_holder(client: tenure.Client, zk: KazooClient, ns: str) -> None:
    foreign = zk.Lock(path_of(ns, "jobs/a"), "svc-1", extra_lock_patterns=[TENURE_PATTERN])
    assert foreign.acquire(timeout=5)
    lock = client.lock("jobs/a")
    assert not lock.acquire(blocking=False), "granted while kazoo holds the lock"
    assert not client.lock("jobs/a").acquire(timeout=0.3)
    holder = client.holder("jobs/a")
    assert holder is not None
    assert holder.owner == "kazoo:svc-1"
    assert not holder.waiting
    assert holder.token == zk.exists(path_of(ns, "jobs/a") + "/" + foreign.node).czxid
    thread, got = in_thread(lambda: lock.acquire(timeout=20))
    wait_for(lambda: len(client.contenders("jobs/a")) == 2)
    queue = client.contenders("jobs/a")
    assert [(h.owner, h.waiting) for h in queue] == [("kazoo:svc-1", False), (queue[1].owner, True)]
    assert thread.is_alive()
    foreign.release()
    thread.join(20)
    assert got == [True]
    assert lock.token > holder.token
    lock.release()


def test_kazoo_waits_for_a_tenure_holder(client: tenure.Client, zk: KazooClient, ns: str) -> None:
    lock = client.lock("jobs/b")
    assert lock.acquire(blocking=False)
    foreign = zk.Lock(path_of(ns, "jobs/b"), "svc-2", extra_lock_patterns=[TENURE_PATTERN])
    assert not foreign.acquire(blocking=False)
    thread, got = in_thread(lambda: foreign.acquire(timeout=20))
    wait_for(lambda: len(client.contenders("jobs/b")) == 2)
    queue = client.contenders("jobs/b")
    assert queue[0].token == lock.token
    assert (queue[1].owner, queue[1].waiting, queue[1].token) == ("kazoo:svc-2", True, 0)
    lock.release()
    thread.join(20)
    assert got == [True]
    # kazoo holds it now: tenure sees it and waits.
    assert not client.lock("jobs/b").acquire(blocking=False)
    foreign.release()
    assert client.lock("jobs/b").acquire(blocking=False)


def test_a_mixed_queue_is_served_in_arrival_order(
    client: tenure.Client, zk: KazooClient, ns: str, url: str
) -> None:
    path = path_of(ns, "q")
    first = client.lock("q")
    assert first.acquire()
    order: list[str] = []
    done = threading.Event()
    kazoo_lock = zk.Lock(path, "k", extra_lock_patterns=[TENURE_PATTERN])

    def kazoo_side() -> None:
        assert kazoo_lock.acquire(timeout=20)
        order.append("kazoo")
        kazoo_lock.release()

    k_thread = threading.Thread(target=kazoo_side, daemon=True)
    k_thread.start()
    wait_for(lambda: len(client.contenders("q")) == 2)
    with tenure.connect(url, ttl=2.0) as other:
        second = other.lock("q")

        def tenure_side() -> None:
            assert second.acquire(timeout=20)
            order.append("tenure")
            second.release()
            done.set()

        t_thread = threading.Thread(target=tenure_side, daemon=True)
        t_thread.start()
        wait_for(lambda: len(client.contenders("q")) == 3)
        assert [h.waiting for h in client.contenders("q")] == [False, True, True]
        first.release()
        assert done.wait(20)
        t_thread.join(5)
    k_thread.join(5)
    assert order == ["kazoo", "tenure"]


def test_kazoo_readers_are_shared_contenders_of_a_tenure_rwlock(
    client: tenure.Client, zk: KazooClient, ns: str
) -> None:
    path = path_of(ns, "rw", kind="rwlock")
    reader = zk.ReadLock(path, "r", extra_lock_patterns=["-write-"])
    assert reader.acquire(timeout=5)
    rw = client.rwlock("rw")
    assert rw.read.acquire(blocking=False), "two readers share the lock"
    rw.read.release()
    assert not rw.write.acquire(blocking=False), "a writer must wait for kazoo's reader"
    writer = zk.WriteLock(path, "w", extra_lock_patterns=["-write-", "-read-"])
    reader.release()
    assert writer.acquire(timeout=5)
    assert not rw.read.acquire(blocking=False), "a reader must wait for kazoo's writer"
    writer.release()
    assert rw.write.acquire(blocking=False)
    rw.write.release()


def test_kazoo_election_and_tenure_election_take_turns(
    client: tenure.Client, zk: KazooClient, ns: str
) -> None:
    path = path_of(ns, "leader", kind="election")
    # kazoo's Election is its Lock, which takes no extra patterns: give it one that does.
    election = zk.Election(path, "kz-node")
    election.lock = zk.Lock(path, "kz-node", extra_lock_patterns=[TENURE_PATTERN])
    leading = threading.Event()
    resign = threading.Event()

    def lead() -> None:
        leading.set()
        resign.wait(20)

    thread = threading.Thread(target=election.run, args=(lead,), daemon=True)
    thread.start()
    assert leading.wait(10)
    ours = client.election("leader", value="tenure-node")
    assert not ours.campaign(timeout=0.3)
    leader = ours.leader()
    assert leader is not None
    assert (leader.owner, leader.value) == ("kazoo:kz-node", "kz-node")
    resign.set()
    thread.join(10)
    assert ours.campaign(timeout=10)
    # Now kazoo's candidate waits for tenure's leader.
    leading.clear()
    resign.clear()
    thread = threading.Thread(target=election.run, args=(lead,), daemon=True)
    thread.start()
    wait_for(lambda: len(ours.candidates()) == 2)
    assert not leading.is_set()
    assert election.contenders()[1:] == ["kz-node"]  # (tenure's node's data is its JSON)
    ours.resign()
    assert leading.wait(10)
    resign.set()
    thread.join(10)


def test_curator_nodes_are_contenders_in_sequence_order(
    client: tenure.Client, zk: KazooClient, ns: str
) -> None:
    """Curator's InterProcessMutex: ``_c_<uuid>-lock-<seq>``, data = the client's address.
    (Curator sorts every child by what follows its last ``lock-``: tenure's nodes already fit.)"""
    path = path_of(ns, "cur")
    zk.ensure_path(path)
    created = zk.create(
        f"{path}/_c_{uuid.uuid4()}-lock-", b"10.1.2.3", ephemeral=True, sequence=True
    )
    lock = client.lock("cur")
    assert not lock.acquire(blocking=False)
    holder = client.holder("cur")
    assert holder is not None
    assert (holder.owner, holder.host, holder.waiting) == ("curator", "10.1.2.3", False)
    zk.delete(created)
    assert lock.acquire(blocking=False)
    lock.release()


def test_a_foreign_node_of_no_known_layout_is_an_exclusive_contender(
    client: tenure.Client, zk: KazooClient, ns: str
) -> None:
    path = path_of(ns, "odd")
    zk.ensure_path(path)
    sequenced = zk.create(f"{path}/something-", b"x", ephemeral=True, sequence=True)
    plain = zk.create(f"{path}/no-sequence", b"", ephemeral=True)
    lock = client.lock("odd")
    assert not lock.acquire(blocking=False)
    queue = client.contenders("odd")
    assert [(h.owner, h.waiting) for h in queue] == [("unknown", False), ("unknown", True)]
    zk.delete(sequenced)
    assert not lock.acquire(blocking=False), "a node without a sequence number still blocks"
    zk.delete(plain)
    assert lock.acquire(blocking=False)
    lock.release()


def test_a_semaphore_with_a_foreign_node_ahead_is_not_a_limit_mismatch(
    client: tenure.Client, zk: KazooClient, ns: str
) -> None:
    path = path_of(ns, "sem", kind="semaphore")
    foreign = zk.Lock(path, "k")
    assert foreign.acquire(timeout=5)
    sem = client.semaphore("sem", limit=2)
    assert not sem.acquire(blocking=False), "kazoo's exclusive holder comes first"
    foreign.release()
    assert sem.acquire(blocking=False)
    sem.release()
