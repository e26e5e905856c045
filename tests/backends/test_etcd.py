"""etcd-specific behaviour: leader loss under contention, partitions, revoked leases, queued
waiters whose session expires, TTL minimums, credentials, fail-over, renewal cost, no polling."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing
import re
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import tenure
from tenure._etcdpb import rpc_pb2 as pb
from tenure._etcdpb import rpc_pb2_grpc as pb_grpc
from tenure.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    LockLostError,
)
from tests.backends import etcd_workers
from tests.contract.runners import Runner
from tests.servers import EtcdCluster, EtcdNode, TcpProxy, wait_until
from tests.servers.process import free_port, start_all
from tests.servers.tls import make_certificates

pytestmark = pytest.mark.server("etcd")
SPAWN = multiprocessing.get_context("spawn")


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    Runner.wait_for(condition, timeout)


@pytest.fixture
def ns() -> str:
    return "e" + uuid.uuid4().hex[:10]


@pytest.fixture
def kv(etcd_server: EtcdCluster) -> Iterator[Any]:
    with grpc.insecure_channel(etcd_server.endpoints[0]) as channel:
        yield pb_grpc.KVStub(channel), pb_grpc.LeaseStub(channel)


def keys_under(stub: Any, prefix: str) -> list[Any]:
    key = prefix.encode()
    reply = stub.Range(pb.RangeRequest(key=key, range_end=key[:-1] + bytes([key[-1] + 1])))
    return list(reply.kvs)


def metric(node: EtcdNode, name: str, method: str) -> int:
    """Sum of etcd's gRPC counter ``name`` for ``method`` (from the member's /metrics)."""
    with urllib.request.urlopen(f"{node.client_url}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    pattern = re.compile(rf'^{name}\{{[^}}]*grpc_method="{method}"[^}}]*\}} (\S+)$', re.M)
    return int(sum(float(value) for value in pattern.findall(text)))


def counter(node: EtcdNode, name: str) -> int:
    """An unlabelled counter of the member's /metrics."""
    with urllib.request.urlopen(f"{node.client_url}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, f"no metric {name}"
    return int(float(found.group(1)))


def server_counts(node: EtcdNode) -> list[int]:
    """Txns handled, messages received on Watch streams, and watch events sent to watchers."""
    return [
        metric(node, "grpc_server_handled_total", "Txn"),
        metric(node, "grpc_server_msg_received_total", "Watch"),
        counter(node, "etcd_debugging_mvcc_events_total"),
    ]


def start_node(tmp: Path, *extra: str) -> EtcdCluster:
    """One etcd member with extra flags (later flags win over the harness's defaults)."""
    client_port, peer_port = free_port(), free_port()
    node = EtcdNode(
        "etcd0", tmp, client_port, peer_port, f"etcd0=http://127.0.0.1:{peer_port}", "t"
    )
    node.argv += list(extra)
    cluster = EtcdCluster([node], tmp, owns_tmp=False)
    try:
        start_all([node], None)
    except BaseException:
        cluster.close()
        raise
    return cluster


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_leader_killed_while_eight_processes_contend(
    fresh_etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    cluster = fresh_etcd_cluster
    url = cluster.url + "?namespace=leaderkill&request_timeout=1"
    stop = tmp_path / "stop"
    procs = [
        SPAWN.Process(
            target=etcd_workers.contend,
            args=(url, "contended", str(tmp_path), 2.0, str(stop), 100_000),
        )
        for _ in range(8)
    ]
    for proc in procs:
        proc.start()

    def records() -> list[dict[str, Any]]:
        found = []
        for log in tmp_path.glob("*.log"):
            found += [json.loads(line) for line in log.read_text().splitlines() if line]
        return found

    try:
        wait_until(lambda: len(records()) >= 50, 60, "50 grants before the fault")
        leader = cluster.wait_for_leader()
        killed_at = time.monotonic_ns()
        leader.kill()
        before = len([r for r in records() if r["enter"] < killed_at])
        wait_until(
            lambda: len([r for r in records() if r["enter"] > killed_at]) >= 50,
            60,
            "50 grants after the leader was killed",
        )
    finally:
        stop.touch()
        for proc in procs:
            proc.join(30)
            if proc.exitcode is None:
                proc.kill()
                proc.join(10)
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
    history = sorted(records(), key=lambda r: r["enter"])
    overlaps = sum(1 for a, b in itertools.pairwise(history) if b["enter"] < a["exit"])
    assert overlaps == 0, "two holders were inside the critical section at once"
    tokens = [r["token"] for r in history]
    assert tokens == sorted(tokens), "tokens not increasing"
    assert len(set(tokens)) == len(tokens), "a token was handed out twice"
    assert all(r["ok"] for r in history), "the fenced store refused a holder"
    # The stall: the longest time nobody held the lock, from the kill on.
    gaps = [
        (b["enter"] - max(a["exit"], killed_at)) / 1e9
        for a, b in itertools.pairwise(history)
        if b["enter"] > killed_at
    ]
    print(
        f"leader {leader.name} SIGKILLed after {before} grants; stall (longest time without a "
        f"holder after the kill) {max(gaps) * 1000:.0f} ms; {len(history)} grants, 0 overlaps"
    )


def test_client_cut_off_from_every_member_loses_before_anyone_acquires(
    etcd_cluster: EtcdCluster, ns: str
) -> None:
    proxies = [TcpProxy(node.host, node.port) for node in etcd_cluster.nodes]
    try:
        cut_url = "etcd://" + ",".join(p.endpoint for p in proxies)
        query = f"?namespace={ns}&request_timeout=0.5"
        ttl = 2.0
        with (
            tenure.connect(cut_url + query, ttl=ttl) as cut,
            tenure.connect(etcd_cluster.url + query, ttl=ttl) as other,
        ):
            held = cut.lock("partitioned")
            assert held.acquire()
            lost_at: list[float] = []
            held.on_lost(lambda _lock: lost_at.append(time.monotonic()))
            waiter = other.lock("partitioned")
            runner = Runner()
            acquired_at: list[float] = []

            def wait() -> bool:
                got = waiter.acquire(timeout=30)
                acquired_at.append(time.monotonic())
                return got

            runner.start(wait)
            wait_for(lambda: len(other.contenders("partitioned")) == 2)
            cut_at = time.monotonic()
            for proxy in proxies:
                proxy.blackhole()
            assert runner.join(60) == [True]
            assert held.lost.is_set()
            assert lost_at, "on_lost did not run"
            assert lost_at[0] < acquired_at[0], "lost fired after the takeover"
            print(
                f"cut off: lost after {lost_at[0] - cut_at:.3f} s, "
                f"taken over after {acquired_at[0] - cut_at:.3f} s (ttl {ttl} s)"
            )
            waiter.release()
    finally:
        for proxy in proxies:
            proxy.close()


def test_lease_revoked_behind_the_holders_back(etcd_server: EtcdCluster, kv: Any, ns: str) -> None:
    stub, leases = kv
    with tenure.connect(f"{etcd_server.url}?namespace={ns}", ttl=2) as client:
        lock = client.lock("revoked")
        assert lock.acquire()
        token = lock.token
        (entry,) = keys_under(stub, f"{ns}/lock/revoked//")
        assert entry.create_revision == token
        leases.LeaseRevoke(pb.LeaseRevokeRequest(ID=entry.lease))
        assert lock.lost.wait(10), "the holder did not notice its revoked lease"
        with pytest.raises(LockLostError):
            lock.ensure_held()
        with pytest.raises(LockLostError):
            lock.release()
        # The client's next default session serves it again.
        again = client.lock("revoked")
        assert again.acquire(timeout=5)
        assert again.token > token
        again.release()


def test_waiter_whose_session_expires_while_queued_fails(
    etcd_server: EtcdCluster, kv: Any, ns: str
) -> None:
    stub, _ = kv
    proxy = TcpProxy(etcd_server.nodes[0].host, etcd_server.nodes[0].port)
    try:
        query = f"?namespace={ns}&request_timeout=0.5"
        with (
            tenure.connect(etcd_server.url + query) as direct,
            tenure.connect(proxy.url_for("etcd") + query) as queued,
        ):
            holder = direct.lock("q")
            assert holder.acquire()
            session = queued.session(ttl=1)
            waiter = session.lock("q")
            runner = Runner()
            outcome: list[object] = []

            def wait() -> None:
                try:
                    outcome.append(waiter.acquire(timeout=30))
                except (LockLostError, BackendError) as exc:
                    outcome.append(exc)

            runner.start(wait)
            wait_for(lambda: len(keys_under(stub, f"{ns}/lock/q//")) == 2)
            proxy.blackhole()
            assert session.lost.wait(10), "the waiter's session was not lost"
            # etcd drops the waiter's key when its lease expires.
            wait_for(lambda: len(keys_under(stub, f"{ns}/lock/q//")) == 1)
            proxy.heal()
            holder.release()
            runner.join(60)
            assert len(outcome) == 1
            assert outcome[0] is not True, "a waiter with an expired session got the lock"
            assert isinstance(outcome[0], LockLostError), outcome
            assert not waiter.held
            assert keys_under(stub, f"{ns}/lock/q//") == []
    finally:
        proxy.close()


def test_queued_waiter_fails_as_soon_as_its_session_is_lost(
    etcd_server: EtcdCluster, kv: Any, ns: str
) -> None:
    stub, _ = kv
    proxy = TcpProxy(etcd_server.nodes[0].host, etcd_server.nodes[0].port)
    try:
        # Calls to a silent etcd wait 30 s: the waiter must learn of the loss from its session.
        query = f"?namespace={ns}&request_timeout=30"
        with (
            tenure.connect(etcd_server.url + query) as direct,
            tenure.connect(proxy.url_for("etcd") + query) as queued,
        ):
            holder = direct.lock("q")
            assert holder.acquire()
            session = queued.session(ttl=2)
            waiter = session.lock("q")
            runner = Runner()

            def wait() -> object:
                try:
                    return waiter.acquire(timeout=60)
                except (LockLostError, BackendError) as exc:
                    return exc

            watches = metric(etcd_server.nodes[0], "grpc_server_msg_received_total", "Watch")
            runner.start(wait)
            wait_for(lambda: len(keys_under(stub, f"{ns}/lock/q//")) == 2)
            # Queued and watching (not still in its acquire's call, which only its 30 s timeout
            # would end).
            wait_for(
                lambda: (
                    metric(etcd_server.nodes[0], "grpc_server_msg_received_total", "Watch")
                    > watches
                )
            )
            proxy.blackhole()
            assert session.lost.wait(10), "the waiter's session was not lost"
            # Still cut off from etcd: the acquire ends now, well before any call could.
            (outcome,) = runner.join(10)
            assert isinstance(outcome, LockLostError), outcome
            assert not waiter.held
            proxy.heal()
            holder.release()
    finally:
        proxy.close()


def test_acquire_deadline_bounds_opening_the_sessions_lease(
    etcd_server: EtcdCluster, ns: str
) -> None:
    """A session opens its lease on first use; an acquire's deadline bounds that too (the
    retry strategy alone would go on for about 8 s here)."""
    proxy = TcpProxy(etcd_server.nodes[0].host, etcd_server.nodes[0].port)
    try:
        query = f"?namespace={ns}&request_timeout=0.5"
        with tenure.connect(proxy.url_for("etcd") + query) as client:
            proxy.blackhole()  # connected, and now no lease can be granted
            for acquire in (
                lambda: client.lock("opening").acquire(timeout=1.0),  # the default session
                lambda: client.session(ttl=5).lock("opening").acquire(timeout=1.0),
                lambda: client.session(ttl=5).lock("opening").acquire(blocking=False),
            ):
                started = time.monotonic()
                with pytest.raises(BackendError, match="grant lease"):
                    acquire()
                # The deadline (or, trying once, the one attempt) plus one request timeout,
                # with room for a loaded machine; not the retry strategy's whole budget.
                assert time.monotonic() - started < 4.0
            proxy.heal()
            lock = client.lock("opening")
            assert lock.acquire(timeout=10)
            lock.release()
    finally:
        proxy.close()


# -- configuration and errors ------------------------------------------------------------------


def test_ttl_below_the_minimum_is_refused(etcd_server: EtcdCluster, ns: str) -> None:
    with tenure.connect(f"{etcd_server.url}?namespace={ns}") as client:
        with pytest.raises(ConfigurationError, match=r"minimum of 1\.0 s"):
            client.lock("short", ttl=0.5).acquire()
        with pytest.raises(ConfigurationError, match=r"minimum of 1\.0 s"):
            client.session(ttl=0.2)


def test_ttl_below_the_servers_own_minimum_is_refused(tmp_path: Path, ns: str) -> None:
    # etcd's minimum lease TTL is 1.5 election timeouts: 3 s here. It would raise a shorter TTL
    # silently; tenure refuses it and names the minimum.
    cluster = start_node(tmp_path, "--election-timeout=2000", "--heartbeat-interval=100")
    try:
        with tenure.connect(f"{cluster.url}?namespace={ns}") as client:
            with pytest.raises(ConfigurationError, match=r"minimum lease TTL .*: 3 s"):
                client.lock("short", ttl=2).acquire()
            lock = client.lock("long", ttl=3)
            assert lock.acquire()
            lock.release()
    finally:
        cluster.close()


def test_bad_url_unreachable_server_and_wrong_password(tmp_path: Path, ns: str) -> None:
    with pytest.raises(ConfigurationError, match="bad port"):
        tenure.connect("etcd://127.0.0.1:notaport")
    with pytest.raises(ConfigurationError, match="etcds://"):
        tenure.connect("etcd://127.0.0.1:2379?cacert=/nonexistent")
    with pytest.raises(ConfigurationError, match="cacert"):
        tenure.connect("etcds://127.0.0.1:2379?cacert=/nonexistent/ca.pem")
    port = free_port()
    with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}") as info:
        tenure.connect(f"etcd://root:s3cr3t-pw@127.0.0.1:{port}?request_timeout=1")
    assert "s3cr3t-pw" not in str(info.value)

    cluster = start_node(tmp_path)
    try:
        endpoint = cluster.endpoints[0]
        ctl = ["etcdctl", f"--endpoints={endpoint}"]
        env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
        for args in (["user", "add", "root:right-pw", "--interactive=false"], ["auth", "enable"]):
            subprocess.run(ctl + args, env=env, check=True, capture_output=True, timeout=30)
        with pytest.raises(ConfigurationError, match=endpoint) as info:
            tenure.connect(f"etcd://root:wrong-pw@{endpoint}?namespace={ns}")
        assert "wrong-pw" not in str(info.value)
        assert "credentials" in str(info.value)
        with pytest.raises(ConfigurationError, match="user and a password"):
            tenure.connect(f"etcd://root@{endpoint}")
        with tenure.connect(f"etcd://root:right-pw@{endpoint}?namespace={ns}", ttl=2) as client:
            lock = client.lock("authed")
            assert lock.acquire()
            assert client.holder("authed") is not None
            # A stale token is replaced transparently.
            client._driver._token = "not-a-valid-token"
            lock.ensure_held()
            lock.release()
            assert "right-pw" not in repr(client)
            # The shared streams carry the token too: keep-alives, and a waiter's watches.
            first, second = client.session(ttl=2), client.session(ttl=2)
            holder, waiter = first.lock("streams"), second.lock("streams")
            assert holder.acquire()
            for _ in range(2):
                runner = Runner()
                runner.start(lambda w=waiter: w.acquire(timeout=20))
                wait_for(lambda: len(client.contenders("streams")) == 2)
                # Both sessions have a lease now (the waiter's opened as it queued).
                assert first._renew()
                assert second._renew()
                holder.release()
                assert runner.join(30) == [True]
                holder, waiter = waiter, holder
                # Again with a token etcd does not know: streams reopen with a new one.
                client._driver._token = "not-a-valid-token"
            holder.release()
            first.close()
            second.close()
    finally:
        cluster.close()


def test_fail_over_to_the_next_endpoint(etcd_cluster: EtcdCluster, ns: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    url = "etcd://" + ",".join([dead, *etcd_cluster.endpoints]) + f"?namespace={ns}"
    with tenure.connect(url, ttl=2) as client:
        lock = client.lock("over")
        assert lock.acquire(timeout=10)
        lock.ensure_held()
        lock.release()


# -- the lock protocol -------------------------------------------------------------------------


def test_one_keep_alive_renews_the_session_however_many_locks(
    etcd_server: EtcdCluster, ns: str
) -> None:
    node = etcd_server.nodes[0]
    with tenure.connect(f"{etcd_server.url}?namespace={ns}") as client:
        session = client.session(ttl=30)
        locks = [session.lock(f"many/{i}") for i in range(300)]
        for lock in locks:
            assert lock.acquire(blocking=False)

        def counts() -> list[float]:
            return [
                metric(node, "grpc_server_msg_received_total", "LeaseKeepAlive"),
                metric(node, "grpc_server_started_total", "LeaseKeepAlive"),
                metric(node, "grpc_server_handled_total", "LeaseTimeToLive"),
                metric(node, "grpc_server_handled_total", "Txn"),
                metric(node, "grpc_server_handled_total", "Range"),
            ]

        before = counts()
        assert session._renew()
        assert session._renew()
        # Per renewal: one keep-alive on the one long-lived stream (opened by the first), and
        # one LeaseTimeToLive listing the lease's keys; nothing per lock.
        after = counts()
        assert [b - a for a, b in zip(before, after, strict=True)] == [2, 1, 2, 0, 0]
        assert all(lock.held for lock in locks)
        session.close()


def test_release_wakes_one_waiter_in_order_and_waiters_do_not_poll(
    etcd_server: EtcdCluster, ns: str
) -> None:
    node = etcd_server.nodes[0]
    url = f"{etcd_server.url}?namespace={ns}"
    clients = [tenure.connect(url) for _ in range(6)]
    try:
        holder = clients[0].lock("herd")
        assert holder.acquire()
        watches = metric(node, "grpc_server_msg_received_total", "Watch")
        runner = Runner()
        order: list[int] = []
        for i, client in enumerate(clients[1:]):
            lock = client.lock("herd")

            def wait(lock: tenure.Lock = lock, i: int = i) -> bool:
                got = lock.acquire(timeout=60)
                order.append(i)
                lock.release()
                return got

            runner.start(wait)
            wait_for(lambda n=i + 2: len(clients[0].contenders("herd")) == n)

        def requests() -> int:
            # Unary calls and streams started, and messages on the shared watch stream.
            return sum(
                metric(node, "grpc_server_started_total", method)
                for method in ("Txn", "Range", "Watch")
            ) + metric(node, "grpc_server_msg_received_total", "Watch")

        # Each waiter's watch request lands after its key shows in contenders(): wait for all five.
        wait_for(lambda: metric(node, "grpc_server_msg_received_total", "Watch") >= watches + 5)
        quiet = requests()
        time.sleep(1.0)  # a measurement window, not a wait for a condition
        assert requests() == quiet, "queued waiters sent requests"
        holder.release()
        assert runner.join(60) == [True] * 5
        assert order == [0, 1, 2, 3, 4], "grants were not FIFO"
    finally:
        for client in clients:
            client.close()


def test_waiters_of_a_client_share_one_watch_stream(etcd_server: EtcdCluster, ns: str) -> None:
    node = etcd_server.nodes[0]
    url = f"{etcd_server.url}?namespace={ns}"
    with tenure.connect(url) as direct, tenure.connect(url) as shared:
        holder = direct.lock("shared")
        assert holder.acquire()
        streams = metric(node, "grpc_server_started_total", "Watch")
        messages = metric(node, "grpc_server_msg_received_total", "Watch")
        runner = Runner()
        sessions = [shared.session(ttl=30) for _ in range(4)]
        for i, session in enumerate(sessions):
            lock = session.lock("shared")

            def wait(lock: tenure.Lock = lock) -> bool:
                got = lock.acquire(timeout=30)
                lock.release()
                return got

            runner.start(wait)
            wait_for(lambda n=i + 2: len(direct.contenders("shared")) == n)
        # Four waiters (four leases, one client): one stream, one watch creation each (on the
        # waiter's predecessor only).
        wait_for(lambda: metric(node, "grpc_server_msg_received_total", "Watch") - messages == 4)
        assert metric(node, "grpc_server_started_total", "Watch") - streams == 1
        holder.release()
        assert runner.join(60) == [True] * 4
        for session in sessions:
            session.close()


def test_waiters_go_on_when_their_shared_stream_breaks(etcd_server: EtcdCluster, ns: str) -> None:
    node = etcd_server.nodes[0]
    proxy = TcpProxy(node.host, node.port)
    try:
        query = f"?namespace={ns}"
        with (
            tenure.connect(etcd_server.url + query) as direct,
            tenure.connect(proxy.url_for("etcd") + query) as cut,
        ):
            holder = direct.lock("broken")
            assert holder.acquire()
            runner = Runner()
            sessions = [cut.session(ttl=30) for _ in range(2)]
            for i, session in enumerate(sessions):
                lock = session.lock("broken")

                def wait(lock: tenure.Lock = lock) -> int:
                    # A waiter that missed its wake-up would look again only after the TTL
                    # (30 s), past this timeout.
                    assert lock.acquire(timeout=20)
                    token = lock.token
                    lock.release()
                    return token

                runner.start(wait)
                wait_for(lambda n=i + 2: len(direct.contenders("broken")) == n)
            proxy.sever()  # every connection of the waiters' client, streams included
            # They queue again on a new connection, keeping their entries (same tokens).
            wait_for(lambda: proxy.connections >= 1)
            holder.release()
            tokens = runner.join(60)
            assert tokens == sorted(tokens), "a waiter lost its place in the queue"
            assert len(set(tokens)) == 2
            assert direct.contenders("broken") == []
            for session in sessions:
                assert not session.lost.is_set()
                session.close()
    finally:
        proxy.close()


def test_retried_release_never_deletes_a_newer_entry(etcd_server: EtcdCluster, ns: str) -> None:
    with tenure.connect(f"{etcd_server.url}?namespace={ns}") as client:
        session = client.session(ttl=5)
        lock = session.lock("again")
        assert lock.acquire()
        old = lock._grant
        assert old is not None
        lock.release()
        assert lock.acquire()  # same session, same key name, a newer create revision
        assert lock.token > old.token
        # The first release's reply "was lost" and it is sent again: it must not delete this one.
        # The driver finds nothing of its own (the core counts that as released).
        assert client._driver.release(old) is False
        assert session._release_once(old) is True
        lock.ensure_held()
        lock.release()


def test_keys_are_ordered_by_create_revision_with_owner_metadata(
    etcd_server: EtcdCluster, kv: Any, ns: str
) -> None:
    stub, _ = kv
    url = f"{etcd_server.url}?namespace={ns}"
    with tenure.connect(url) as a, tenure.connect(url) as b:
        first = a.lock("meta/data")
        assert first.acquire()
        nested = a.lock("meta")  # a prefix of the other name: separate key space
        assert nested.acquire(blocking=False)
        second = b.lock("meta/data")
        assert not second.acquire(blocking=False)
        assert len(keys_under(stub, f"{ns}/lock/meta/data//")) == 1, "try-once left its key"
        runner = Runner()
        runner.start(lambda: second.acquire(timeout=30))
        wait_for(lambda: len(a.contenders("meta/data")) == 2)
        entries = keys_under(stub, f"{ns}/lock/meta/data//")
        values = [json.loads(e.value) for e in sorted(entries, key=lambda e: e.create_revision)]
        queue = a.contenders("meta/data")
        assert [h.owner for h in queue] == [v["owner"] for v in values]
        assert queue[0].token == first.token
        assert queue[1].token == 0
        assert queue[0].expires_in is not None
        assert 0 < queue[0].expires_in <= 30
        meta = a.holder("meta")
        assert meta is not None
        assert meta.token == nested.token
        first_token = first.token
        first.release()
        assert runner.join(30) == [True]
        assert second.token > first_token
        second.release()
        nested.release()


def test_stubs_keep_etcds_wire_names_under_renamed_packages() -> None:
    assert pb.DESCRIPTOR.package == "tenure_etcdserverpb"
    assert pb.DESCRIPTOR.services_by_name["KV"].full_name == "tenure_etcdserverpb.KV"
    source = Path(pb_grpc.__file__).read_text()
    assert "'/etcdserverpb.KV/Txn'" in source
    assert "/tenure_etcdserverpb." not in source


class TlsNode(EtcdNode):
    """An etcd member serving clients over TLS only, requiring client certificates."""

    def __init__(self, tmp: Path, files: dict[str, Path]) -> None:
        client_port, peer_port = free_port(), free_port()
        super().__init__(
            "etcd0", tmp, client_port, peer_port, f"etcd0=http://127.0.0.1:{peer_port}", "t"
        )
        self.client_url = f"https://127.0.0.1:{client_port}"
        self.argv += [
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--cert-file={files['server']}",
            f"--key-file={files['server-key']}",
            f"--trusted-ca-file={files['ca']}",
            "--client-cert-auth",
        ]
        self._files = files

    def probe(self) -> bool:
        import ssl

        context = ssl.create_default_context(cafile=str(self._files["ca"]))
        context.load_cert_chain(str(self._files["client"]), str(self._files["client-key"]))
        with urllib.request.urlopen(f"{self.client_url}/health", timeout=0.5, context=context):
            return True


def test_etcds_with_ca_client_certificate_and_key(tmp_path: Path, ns: str) -> None:
    files = make_certificates(tmp_path)
    node = TlsNode(tmp_path, files)
    cluster = EtcdCluster([node], tmp_path, owns_tmp=False)
    try:
        start_all([node], None)
        query = (
            f"?namespace={ns}&cacert={files['ca']}&cert={files['client']}&key={files['client-key']}"
        )
        with tenure.connect(f"etcds://{node.endpoint}{query}", ttl=2) as client:
            lock = client.lock("secure")
            assert lock.acquire()
            assert client.holder("secure") is not None
            lock.release()
        # Plain text against a TLS port, or TLS without our certificate, does not connect.
        with pytest.raises(BackendError, match=node.endpoint):
            tenure.connect(f"etcd://{node.endpoint}?request_timeout=2")
        with pytest.raises(BackendError, match=node.endpoint):
            tenure.connect(f"etcds://{node.endpoint}?cacert={files['ca']}&request_timeout=2")
        with pytest.raises(ConfigurationError, match="both cert and key"):
            tenure.connect(f"etcds://{node.endpoint}?cert={files['client']}")
    finally:
        cluster.close()


async def test_asyncio_holder_cut_off_loses_then_recovers(
    etcd_server: EtcdCluster, ns: str
) -> None:
    from tenure import aio

    node = etcd_server.nodes[0]
    proxy = TcpProxy(node.host, node.port)
    try:
        query = f"?namespace={ns}&request_timeout=0.5"
        cut = await aio.connect(proxy.url_for("etcd") + query, ttl=1)
        try:
            lock = cut.lock("aio")
            assert await lock.acquire()
            proxy.blackhole()
            assert await lock.lost.wait(10), "the asyncio holder did not notice the partition"
            with tenure.connect(etcd_server.url + query) as other:
                taker = other.lock("aio")
                assert taker.acquire(timeout=10)  # after etcd expired the lease
                taker.release()
            proxy.heal()
            # The client reconnects: a new session works again.
            assert await lock.acquire(timeout=10)
            await lock.release()
        finally:
            await cut.close()
    finally:
        proxy.close()


# -- shared modes ------------------------------------------------------------------------------


def test_keys_keep_gos_mutex_layout_and_carry_the_mode_otherwise(
    etcd_server: EtcdCluster, kv: Any, ns: str
) -> None:
    stub, _ = kv
    with tenure.connect(f"{etcd_server.url}?namespace={ns}") as client:
        lock, sem = client.lock("x"), client.semaphore("x", limit=3)
        reader, writer = client.rwlock("x"), client.rwlock("y")
        for held in (lock, sem, reader.read, writer.write):
            assert held.acquire(blocking=False)
        # Plain locks: etcdctl lock's layout, <prefix>/<lease-hex>, so that they interoperate.
        (plain,) = keys_under(stub, f"{ns}/lock/x//")
        assert plain.key.decode() == f"{ns}/lock/x//{plain.lease:016x}"
        # The others: <prefix>/<mode>/<lease-hex>/<owner> (a session may hold several).
        for prefix, tag in [
            (f"{ns}/semaphore/x//", "permit"),
            (f"{ns}/rwlock/x//", "read"),
            (f"{ns}/rwlock/y//", "write"),
        ]:
            (entry,) = keys_under(stub, prefix)
            owner = json.loads(entry.value)["owner"]
            assert entry.key.decode() == f"{prefix}{tag}/{entry.lease:016x}/{owner}"
        (permit,) = keys_under(stub, f"{ns}/semaphore/x//")
        assert json.loads(permit.value)["limit"] == 3
        for held in (lock, sem, reader.read, writer.write):
            held.release()


def test_a_permit_release_wakes_exactly_one_waiter(etcd_server: EtcdCluster, ns: str) -> None:
    """Two holders, four waiters: one release wakes the first waiter only; it is granted and
    wakes the next, which takes its place. The server's counts prove it, whatever the timing:
    etcd sends a revision's events to every watcher before the next revision's."""
    node = etcd_server.nodes[0]
    url = f"{etcd_server.url}?namespace={ns}"
    clients = [tenure.connect(url) for _ in range(6)]
    finish = threading.Event()
    try:
        holders = [client.semaphore("pool", limit=2) for client in clients[:2]]
        for sem in holders:
            assert sem.acquire(blocking=False)
        before = server_counts(node)
        runner = Runner()
        waiters = [client.semaphore("pool", limit=2) for client in clients[2:]]
        for i, sem in enumerate(waiters):

            def hold(sem: tenure.Semaphore = sem) -> bool:
                got = sem.acquire(timeout=60)
                assert finish.wait(60)
                sem.release()
                return got

            runner.start(hold)
            wait_for(lambda n=i + 3: len(holders[0].contenders()) == n)
        # Each waiter watches one thing: the first the holders' deletes, the others their
        # predecessor.
        wait_for(lambda: server_counts(node)[1] - before[1] == 4)
        quiet = server_counts(node)
        holders[0].release()
        wait_for(lambda: waiters[0].held)
        # The first waiter stops its watch; the second stops its own and watches the holders.
        wait_for(lambda: server_counts(node)[1] - quiet[1] >= 3)
        txns, messages, events = (b - a for a, b in zip(quiet, server_counts(node), strict=True))
        assert messages == 3
        # The release, the first waiter's look and touch (its grant, for the next waiter), the
        # next waiter's look.
        assert txns == 4
        # The release's delete to the first waiter, the touch to the second: nobody else woke.
        assert events == 2
        assert not any(sem.held for sem in waiters[1:])
        queue = holders[0].contenders()
        assert [(h.mode, h.waiting) for h in queue] == [("permit", False)] * 2 + [
            ("permit", True)
        ] * 3
        assert queue[1].token == waiters[0].token
        finish.set()
        holders[1].release()
        assert runner.join(60) == [True] * 4
    finally:
        finish.set()
        for client in clients:
            client.close()


def test_a_writers_release_wakes_exactly_the_run_of_readers(
    etcd_server: EtcdCluster, ns: str
) -> None:
    node = etcd_server.nodes[0]
    url = f"{etcd_server.url}?namespace={ns}"
    clients = [tenure.connect(url) for _ in range(6)]
    finish = threading.Event()
    try:
        first = clients[0].rwlock("rw")
        assert first.write.acquire(blocking=False)
        before = server_counts(node)
        runner = Runner()
        queued = [client.rwlock("rw") for client in clients[1:]]
        # Three readers, a writer, a reader.
        sides = [rw.write if i == 3 else rw.read for i, rw in enumerate(queued)]
        for i, side in enumerate(sides):

            def hold(side: tenure.Lock = side) -> bool:
                got = side.acquire(timeout=60)
                assert finish.wait(60)
                side.release()
                return got

            runner.start(hold)
            wait_for(lambda n=i + 2: len(first.contenders()) == n)
        wait_for(lambda: server_counts(node)[1] - before[1] == 5)  # one watch each
        quiet = server_counts(node)
        first.write.release()
        wait_for(lambda: all(side.held for side in sides[:3]))
        wait_for(lambda: server_counts(node)[1] - quiet[1] >= 3)
        txns, messages, events = (b - a for a, b in zip(quiet, server_counts(node), strict=True))
        assert messages == 3  # their watches stopped
        assert txns == 4  # the release, and each reader's look
        assert events == 3  # the three readers watched the writer; the others did not wake
        assert not sides[3].held
        assert not sides[4].held
        assert [(h.mode, h.waiting) for h in first.contenders()] == [
            ("shared", False),
            ("shared", False),
            ("shared", False),
            ("exclusive", True),
            ("shared", True),
        ]
        finish.set()
        assert runner.join(60) == [True] * 5
    finally:
        finish.set()
        for client in clients:
            client.close()


def test_the_first_permit_waiter_sleeps_through_later_waiters_leaving(
    etcd_server: EtcdCluster, ns: str
) -> None:
    """It watches the deletes of every key in the queue, but only those of the holders (keys
    older than its own) wake it."""
    url = f"{etcd_server.url}?namespace={ns}"
    with tenure.connect(url) as a, tenure.connect(url) as b, tenure.connect(url) as c:
        holder, other = a.semaphore("pool", limit=2), a.semaphore("pool", limit=2)
        assert holder.acquire(blocking=False)
        assert other.acquire(blocking=False)
        looks = []
        look = b._driver._look
        b._driver._look = lambda *args: looks.append(args) or look(*args)  # type: ignore[method-assign]
        first = b.semaphore("pool", limit=2)
        runner = Runner()
        runner.start(lambda: first.acquire(timeout=60))
        wait_for(lambda: len(holder.contenders()) == 3)
        for _ in range(3):  # later waiters come and go
            assert not c.semaphore("pool", limit=2).acquire(timeout=0.1)
        assert len(holder.contenders()) == 3
        holder.release()  # after their deletes: a wake-up by one of them would look first
        assert runner.join(30) == [True]
        assert len(looks) == 1, "the first waiter was woken by a later waiter's delete"
        first.release()
        other.release()


def test_a_limit_mismatch_leaves_nothing_behind(etcd_server: EtcdCluster, kv: Any, ns: str) -> None:
    stub, _ = kv
    prefix = f"{ns}/semaphore/quota//"
    with (
        tenure.connect(f"{etcd_server.url}?namespace={ns}") as a,
        tenure.connect(f"{etcd_server.url}?namespace={ns}") as b,
    ):
        held = a.semaphore("quota", limit=1)
        assert held.acquire(blocking=False)
        queued = a.semaphore("quota", limit=1)
        runner = Runner()
        runner.start(lambda: queued.acquire(timeout=60))
        wait_for(lambda: len(keys_under(stub, prefix)) == 2)
        keys = [e.key for e in keys_under(stub, prefix)]
        for blocking in (False, True):
            other = b.semaphore("quota", limit=2)
            with pytest.raises(ConfigurationError, match=r"limit 1.*limit 2"):
                other.acquire(blocking=blocking, timeout=60)
            assert not other.held
            assert [e.key for e in keys_under(stub, prefix)] == keys
        held.release()
        assert runner.join(30) == [True]
        # The waiter, now the oldest, keeps the limit.
        with pytest.raises(ConfigurationError, match=r"limit 1.*limit 2"):
            b.semaphore("quota", limit=2).acquire(blocking=False)
        queued.release()
        assert keys_under(stub, prefix) == []
        new = b.semaphore("quota", limit=2)
        assert new.acquire(blocking=False)  # empty: a new limit
        assert json.loads(keys_under(stub, prefix)[0].value)["limit"] == 2
        new.release()


def test_a_clean_up_that_failed_is_done_by_a_later_renewal(
    etcd_server: EtcdCluster, kv: Any, ns: str
) -> None:
    """A permit waiter times out while etcd is out of reach: its key (never reused, unlike a
    plain lock's) must not stay in the queue for as long as its session lives."""
    stub, _ = kv
    prefix = f"{ns}/semaphore/pool//"
    proxy = TcpProxy(etcd_server.nodes[0].host, etcd_server.nodes[0].port)
    try:
        query = f"?namespace={ns}&request_timeout=0.5"
        with (
            tenure.connect(etcd_server.url + query) as direct,
            tenure.connect(proxy.url_for("etcd") + query) as cut,
        ):
            holder = direct.semaphore("pool", limit=1)
            assert holder.acquire()
            session = cut.session(ttl=10)
            waiter = session.semaphore("pool", limit=1)
            runner = Runner()
            runner.start(lambda: waiter.acquire(timeout=3.0))
            wait_for(lambda: len(keys_under(stub, prefix)) == 2)
            proxy.blackhole()
            # It times out: False, or, when one of its wait's requests was cut off and the
            # retry outlasted its deadline (on a loaded machine), BackendTimeoutError. Either
            # way its clean-up could not reach etcd.
            with contextlib.suppress(BackendTimeoutError):
                assert runner.join(30) == [False]
            assert len(keys_under(stub, prefix)) == 2
            proxy.heal()
            assert session._renew()
            assert [e.create_revision for e in keys_under(stub, prefix)] == [holder.token]
            assert not session.lost.is_set()
            holder.release()
            session.close()
    finally:
        proxy.close()


def test_renewals_at_once_delete_each_leftover_once(etcd_server: EtcdCluster, ns: str) -> None:
    """Sessions of one client renew on keep-alive threads of their own, which may delete the
    driver's leftover entries at the same time (a test's explicit renewal did, beside the
    keep-alive's): every entry is deleted by its condition and forgotten, and nothing raises."""
    from tenure._sync.backends.etcd import _created_at

    with tenure.connect(etcd_server.url + f"?namespace={ns}") as client:
        driver = client._driver
        me = f"{ns}/lock/leftovers//0".encode()
        driver._remember(me, *(_created_at(me, revision) for revision in range(1, 41)))
        start = threading.Barrier(4)
        errors: list[BaseException] = []

        def renew() -> None:
            start.wait(10)
            try:
                driver._delete_leftovers()
            except BaseException as exc:  # (what the test looks for)
                errors.append(exc)

        threads = [threading.Thread(target=renew) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert driver._leftovers == {}


def _lose_enqueue_replies(
    client: Any, monkeypatch: pytest.MonkeyPatch, times: int | None = None
) -> list[int]:
    """From now on the client's enqueue requests get no reply (the first ``times`` of them, or
    all): the first one is written to etcd and its reply lost, the later ones do not reach etcd
    (etcd out of reach). Returns the list the failed requests are counted in."""
    driver = client._driver
    real = driver._txn
    lost: list[int] = []

    def lossy(what: str, *args: Any) -> Any:
        if what != "acquire" or (times is not None and len(lost) >= times):
            return real(what, *args)
        if not lost:
            real(what, *args)  # the write lands
        lost.append(1)
        raise BackendTimeoutError("etcd: the reply was lost (injected)")

    monkeypatch.setattr(driver, "_txn", lossy)
    return lost


@contextlib.contextmanager
def _held_and_a_session(
    etcd_server: EtcdCluster, ns: str, kind: str = "lock"
) -> Iterator[tuple[Any, Any, Any, Callable[[Any], Any]]]:
    """``job`` (a lock, or a limit-1 semaphore) held through one client, and a session (TTL
    10 s) of another client to contend from: yields (holder, the other client, its session,
    the maker of a contender from a client or session)."""
    query = f"?namespace={ns}&request_timeout=0.5"
    with (
        tenure.connect(etcd_server.url + query) as direct,
        tenure.connect(etcd_server.url + query) as cut,
    ):
        make: Callable[[Any], Any] = (
            (lambda s: s.lock("job")) if kind == "lock" else (lambda s: s.semaphore("job", limit=1))
        )
        holder = make(direct)
        assert holder.acquire()
        session = cut.session(ttl=10)
        yield holder, cut, session, make
        session.close()


@pytest.mark.parametrize("kind", ["lock", "semaphore"])
def test_an_entry_whose_enqueue_reply_was_lost_is_deleted_by_the_next_renewal(
    etcd_server: EtcdCluster, kv: Any, ns: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An acquire whose entry was written but whose reply was lost, and which could not reach
    etcd again before its deadline, must not leave that entry queued with nobody waiting on it
    (a lock's would hold the lock, for nobody, as long as the session lives)."""
    stub, _ = kv
    prefix = f"{ns}/{kind}/job//"
    with _held_and_a_session(etcd_server, ns, kind) as (holder, cut, session, make):
        waiter = make(session)
        lost = _lose_enqueue_replies(cut, monkeypatch)
        with pytest.raises(BackendTimeoutError):
            waiter.acquire(timeout=1.0)
        assert len(lost) >= 2  # (retried until the deadline)
        assert len(keys_under(stub, prefix)) == 2  # the lost reply's entry is queued
        monkeypatch.undo()
        assert session._renew()
        assert [e.create_revision for e in keys_under(stub, prefix)] == [holder.token]
        holder.release()
        other = make(cut)
        assert other.acquire(timeout=5.0)  # nobody's entry is in its way
        other.release()
        assert not session.lost.is_set()


def test_an_acquire_whose_enqueue_reply_was_lost_keeps_its_place(
    etcd_server: EtcdCluster, kv: Any, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its retry finds the entry the lost reply's request made and waits on it (its place in
    the queue), after writing its own value over it (the next renewal would delete the entry
    by the first attempt's value): granted on that entry, which the renewal leaves."""
    stub, _ = kv
    prefix = f"{ns}/lock/job//"
    with _held_and_a_session(etcd_server, ns) as (holder, cut, session, _):
        waiter = session.lock("job")
        lost = _lose_enqueue_replies(cut, monkeypatch, times=1)
        runner = Runner()
        runner.start(lambda: waiter.acquire(timeout=10.0))
        wait_for(lambda: len(keys_under(stub, prefix)) == 2 and lost == [1])
        [first] = [e for e in keys_under(stub, prefix) if e.create_revision != holder.token]
        holder.release()
        assert runner.join(10) == [True]
        assert waiter.token == first.create_revision
        assert session._renew()
        assert [e.create_revision for e in keys_under(stub, prefix)] == [waiter.token]
        assert not session.lost.is_set()
        waiter.release()


async def test_an_acquire_cancelled_while_its_enqueue_is_on_its_way_leaves_no_entry(
    etcd_server: EtcdCluster, kv: Any, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio: an acquire cancelled after its enqueue request was sent, before the reply: the
    entry that request made must go at once (a lock's would otherwise hold the lock, for
    nobody, until a renewal), not wait for the session's next renewal."""
    from tenure import aio

    stub, _ = kv
    prefix = f"{ns}/lock/job//"
    query = f"?namespace={ns}"
    with tenure.connect(etcd_server.url + query) as direct:
        holder = direct.lock("job")
        assert holder.acquire()
        cut = await aio.connect(etcd_server.url + query, ttl=30)
        try:
            waiter = cut.lock("job")
            assert not await waiter.acquire(timeout=0)  # (the session is open: no renewal soon)
            driver = cut._driver
            real = driver._txn
            sent: list[int] = []

            async def cancelled_on_its_way(what: str, *args: Any) -> Any:
                if what == "acquire" and not sent:
                    sent.append(1)
                    await real(what, *args)  # the write lands; the caller is cancelled then
                    raise asyncio.CancelledError
                return await real(what, *args)

            monkeypatch.setattr(driver, "_txn", cancelled_on_its_way)
            with pytest.raises(asyncio.CancelledError):
                await waiter.acquire(timeout=10)
            assert sent == [1]
            assert [e.create_revision for e in keys_under(stub, prefix)] == [holder.token]
        finally:
            monkeypatch.undo()
            await cut.close()
        holder.release()


def test_a_later_acquire_replaces_an_entry_whose_enqueue_reply_was_lost(
    etcd_server: EtcdCluster, kv: Any, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same lock asked again in the session before any renewal: it must not take the lost
    reply's entry for its own (the renewal deletes that entry by its value, which would delete
    the lock's key under its holder); it replaces it, and the renewal leaves the new one."""
    stub, _ = kv
    prefix = f"{ns}/lock/job//"
    with _held_and_a_session(etcd_server, ns) as (holder, cut, session, _):
        waiter = session.lock("job")
        _lose_enqueue_replies(cut, monkeypatch)
        with pytest.raises(BackendTimeoutError):
            waiter.acquire(timeout=1.0)
        monkeypatch.undo()
        [left] = [e for e in keys_under(stub, prefix) if e.create_revision != holder.token]
        holder.release()
        assert waiter.acquire(timeout=5.0)
        assert waiter.token > left.create_revision
        assert session._renew()
        assert [e.create_revision for e in keys_under(stub, prefix)] == [waiter.token]
        assert not session.lost.is_set()
        assert not holder.acquire(timeout=0)
        waiter.release()
