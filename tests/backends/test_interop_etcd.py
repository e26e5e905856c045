"""tenure and etcd's Go ``concurrency`` package (through ``etcdctl lock`` / ``etcdctl elect``) on
one etcd lock or election, both ways.

The same lock from Go: ``concurrency.NewMutex(s, "<ns>/lock/<name>/")`` / ``etcdctl lock
<ns>/lock/<name>/``; the same election: ``NewElection(s, "<ns>/election/<name>/")`` /
``etcdctl elect <ns>/election/<name>/ <value>``. etcdctl runs as a subprocess started here and
ended by its PID (SIGTERM: it unlocks or resigns; SIGKILL after a grace), every wait bounded.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import tenure
from tenure._etcdpb import rpc_pb2 as pb
from tenure._etcdpb import rpc_pb2_grpc as pb_grpc
from tests.contract.runners import Runner
from tests.servers import EtcdCluster

pytestmark = pytest.mark.server("etcd")

TIMEOUT = 20.0


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    Runner.wait_for(condition, timeout)


class Etcdctl:
    """One ``etcdctl`` subprocess; its stdout lines arrive in ``lines``."""

    def __init__(self, endpoint: str, *args: str) -> None:
        binary = shutil.which("etcdctl")
        if binary is None:
            missing = "etcdctl is not installed (Debian package etcd-client)"
            if os.environ.get("CI") == "true":
                pytest.fail(f"{missing} (CI=true: missing tools are errors)", pytrace=False)
            pytest.skip(missing)
        self.proc = subprocess.Popen(
            [binary, f"--endpoints={endpoint}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, n: int, timeout: float = TIMEOUT) -> list[str]:
        """The next ``n`` lines of its output (fails after ``timeout``)."""
        try:
            return [self.lines.get(timeout=timeout) for _ in range(n)]
        except queue.Empty:
            raise AssertionError(f"etcdctl printed no more within {timeout} s") from None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (etcdctl unlocks or resigns), SIGKILL after ``timeout``; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)
        finally:
            self._reader.join(timeout)
            assert self.proc.stdout is not None
            self.proc.stdout.close()


@pytest.fixture
def ns() -> str:
    return "x" + uuid.uuid4().hex[:10]


@pytest.fixture
def endpoint(etcd_server: EtcdCluster) -> str:
    return etcd_server.endpoints[0]


@pytest.fixture
def url(etcd_server: EtcdCluster, ns: str) -> str:
    return f"{etcd_server.url}?namespace={ns}"


@pytest.fixture
def client(url: str) -> Iterator[tenure.Client]:
    with tenure.connect(url, ttl=2.0) as c:
        yield c


@pytest.fixture
def ctl(endpoint: str) -> Iterator[Any]:
    started: list[Etcdctl] = []

    def start(*args: str) -> Etcdctl:
        started.append(Etcdctl(endpoint, *args))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


def create_revision(endpoint: str, key: str) -> int:
    with grpc.insecure_channel(endpoint) as channel:
        reply = pb_grpc.KVStub(channel).Range(pb.RangeRequest(key=key.encode()), timeout=5)
    assert reply.kvs, f"no key {key}"
    return int(reply.kvs[0].create_revision)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
    return subprocess.run(
        [sys.executable, "-m", "tenure", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )


# -- locks ---------------------------------------------------------------------------------


def test_tenure_waits_for_etcdctl_lock_and_shows_it_as_the_holder(
    client: tenure.Client, ctl: Any, ns: str, endpoint: str, url: str
) -> None:
    go = ctl("lock", f"{ns}/lock/jobs/nightly/")  # no command: holds until SIGTERM
    (key,) = go.expect(1)  # printed once it holds the lock
    assert key.startswith(f"{ns}/lock/jobs/nightly//")
    lock = client.lock("jobs/nightly")
    assert not lock.acquire(blocking=False)
    holder = client.holder("jobs/nightly")
    assert holder is not None
    assert (holder.owner, holder.waiting) == ("go", False)
    assert holder.token == create_revision(endpoint, key)
    server = url.partition("?")[0]
    status = cli("status", "jobs/nightly", "--url", server, "--namespace", ns)
    assert status.returncode == 0, status.stderr
    assert "lock jobs/nightly: held" in status.stdout, status.stdout
    assert "waiting" not in status.stdout
    assert "go" in status.stdout
    busy = cli("run", "jobs/nightly", "--url", server, "--namespace", ns, "--no-wait", "--", "true")
    assert busy.returncode == 75
    assert "pid 0" not in busy.stderr, busy.stderr
    assert "held by go (token" in busy.stderr, busy.stderr
    runner = Runner()
    runner.start(lambda: lock.acquire(timeout=TIMEOUT))
    wait_for(lambda: len(client.contenders("jobs/nightly")) == 2)
    assert [h.waiting for h in client.contenders("jobs/nightly")] == [False, True]
    assert go.stop() == 0
    assert runner.join(TIMEOUT) == [True]
    assert lock.token > holder.token
    lock.release()


def test_etcdctl_lock_waits_for_tenure(
    client: tenure.Client, ctl: Any, ns: str, endpoint: str
) -> None:
    lock = client.lock("jobs/nightly")
    assert lock.acquire(blocking=False)
    go = ctl("lock", f"{ns}/lock/jobs/nightly/", "--", "sh", "-c", "echo ran $ETCD_LOCK_KEY")
    wait_for(lambda: len(client.contenders("jobs/nightly")) == 2)
    waiter = client.contenders("jobs/nightly")[1]
    assert (waiter.owner, waiter.waiting, waiter.token) == ("go", True, 0)
    assert go.proc.poll() is None, "etcdctl ran its command while tenure holds the lock"
    assert go.lines.empty()
    lock.release()
    (line,) = go.expect(1)
    assert line.startswith(f"ran {ns}/lock/jobs/nightly//")
    assert go.proc.wait(TIMEOUT) == 0
    assert client.holder("jobs/nightly") is None


# -- elections -----------------------------------------------------------------------------


def test_a_go_leaders_value_is_read_as_is(
    client: tenure.Client, ctl: Any, ns: str, endpoint: str
) -> None:
    go = ctl("elect", f"{ns}/election/e1/", "go-leader")
    key, value = go.expect(2)
    assert value == "go-leader"
    election = client.election("e1", value="tenure-b")
    leader = election.leader()
    assert leader is not None
    assert (leader.value, leader.owner, leader.waiting) == ("go-leader", "go", False)
    assert leader.token == create_revision(endpoint, key)
    seen: list[tenure.Holder] = []
    observed = threading.Event()

    def observe() -> None:
        for current in client.election("e1").observe():
            seen.append(current)
            if current.value == "tenure-b":
                observed.set()
                return

    watcher = threading.Thread(target=observe, daemon=True)
    watcher.start()
    runner = Runner()
    runner.start(lambda: election.campaign(timeout=TIMEOUT))
    wait_for(lambda: len(election.candidates()) == 2)
    standby = election.candidates()[1]
    assert (standby.value, standby.waiting) == ("tenure-b", True)
    assert go.stop() == 0  # resigns
    assert runner.join(TIMEOUT) == [True]
    assert observed.wait(TIMEOUT)
    watcher.join(TIMEOUT)
    assert [h.value for h in seen] == ["go-leader", "tenure-b"]
    assert election.term > leader.token
    election.resign()


def test_go_sees_a_tenure_leaders_value_and_its_proclamations(
    client: tenure.Client, ctl: Any, ns: str
) -> None:
    election = client.election("e2", value="tenure-a")
    assert election.campaign(timeout=5)
    observer = ctl("elect", "-l", f"{ns}/election/e2/")
    key, value = observer.expect(2)
    assert key.startswith(f"{ns}/election/e2//")
    assert value == "tenure-a"
    election.proclaim("tenure-a2")
    assert observer.expect(2) == [key, "tenure-a2"]
    go = ctl("elect", f"{ns}/election/e2/", "go-b")
    wait_for(lambda: len(election.candidates()) == 2)
    standby = election.candidates()[1]
    assert (standby.value, standby.owner, standby.waiting) == ("go-b", "go", True)
    assert go.lines.empty(), "Go campaigned to leadership while tenure leads"
    election.resign()
    go_key, go_value = go.expect(2)  # elected
    assert go_value == "go-b"
    assert observer.expect(2) == [go_key, "go-b"]
    leader = election.leader()
    assert leader is not None
    assert leader.value == "go-b"


def test_a_leader_without_a_value_shows_none_to_tenure_and_empty_to_go(
    client: tenure.Client, ctl: Any, ns: str
) -> None:
    election = client.election("e3")
    assert election.campaign(timeout=5)
    leader = election.leader()
    assert leader is not None
    assert leader.value is None
    assert leader.owner != "go"
    assert leader.pid == os.getpid()
    observer = ctl("elect", "-l", f"{ns}/election/e3/")
    _key, value = observer.expect(2)
    assert value == ""
    election.resign()


# -- keys of no tenure layout: the safe side ---------------------------------------------------


@pytest.mark.parametrize(("kind", "side"), [("rwlock", "read"), ("semaphore", "permit")])
def test_a_go_mutex_on_a_shared_kinds_prefix_is_exclusive(
    client: tenure.Client, ctl: Any, ns: str, kind: str, side: str
) -> None:
    """Go has no rwlock or semaphore; its Mutex pointed at tenure's rwlock or semaphore prefix
    must still not share with tenure's readers or permits."""
    go = ctl("lock", f"{ns}/{kind}/shared/")
    go.expect(1)
    lock = client.rwlock("shared").read if kind == "rwlock" else client.semaphore("shared", limit=3)
    assert not lock.acquire(blocking=False), f"a tenure {side} shared with Go's Mutex"
    holder = client.holder("shared", kind=kind)
    assert holder is not None
    assert (holder.owner, holder.mode, holder.waiting) == ("go", "exclusive", False)
    runner = Runner()
    runner.start(lambda: lock.acquire(timeout=TIMEOUT))
    wait_for(lambda: len(client.contenders("shared", kind=kind)) == 2)
    assert go.stop() == 0
    assert runner.join(TIMEOUT) == [True]
    lock.release()


def test_a_key_of_no_known_layout_is_an_exclusive_contender(
    client: tenure.Client, ns: str, endpoint: str
) -> None:
    with grpc.insecure_channel(endpoint) as channel:
        kv = pb_grpc.KVStub(channel)
        odd = f"{ns}/lock/odd//not-a-lease".encode()
        kv.Put(pb.PutRequest(key=odd, value=b"\xff binary"), timeout=5)
        lock = client.lock("odd")
        assert not lock.acquire(blocking=False)
        holder = client.holder("odd")
        assert holder is not None
        assert (holder.owner, holder.waiting) == ("unknown", False)
        kv.DeleteRange(pb.DeleteRangeRequest(key=odd), timeout=5)
    assert lock.acquire(blocking=False)
    lock.release()


def test_election_layout_value_as_is_and_metadata_beside_it(
    client: tenure.Client, ns: str, endpoint: str, url: str
) -> None:
    """The stable layout: ``<ns>/election/<name>//<lease-hex>`` = the value as is, and
    ``<ns>/meta/election/<name>//<lease-hex>`` = tenure's metadata, on the same lease; both go
    with a resign, and a try-once that lost leaves neither."""

    def keys(prefix: str) -> list[Any]:
        key = prefix.encode()
        with grpc.insecure_channel(endpoint) as channel:
            reply = pb_grpc.KVStub(channel).Range(
                pb.RangeRequest(key=key, range_end=key[:-1] + bytes([key[-1] + 1])), timeout=5
            )
        return list(reply.kvs)

    election = client.election("svc/a", value="10.0.0.1:80")
    assert election.campaign(timeout=5)
    (entry,) = keys(f"{ns}/election/svc/a//")
    (meta,) = keys(f"{ns}/meta/election/svc/a//")
    assert entry.key.decode() == f"{ns}/election/svc/a//{entry.lease:016x}"
    assert entry.value == b"10.0.0.1:80"
    assert meta.key.decode() == f"{ns}/meta/election/svc/a//{entry.lease:016x}"
    assert meta.lease == entry.lease
    record = json.loads(meta.value)
    assert (record["pid"], record["value"]) == (os.getpid(), "10.0.0.1:80")
    assert election.term == entry.create_revision
    election.proclaim("10.0.0.2:80")
    (entry,) = keys(f"{ns}/election/svc/a//")
    assert entry.value == b"10.0.0.2:80"
    assert json.loads(keys(f"{ns}/meta/election/svc/a//")[0].value)["value"] == "10.0.0.2:80"
    with tenure.connect(url) as other:
        assert not other.election("svc/a").campaign(timeout=0)
    assert len(keys(f"{ns}/meta/election/svc/a//")) == 1, "the loser left its metadata"
    election.resign()
    assert keys(f"{ns}/election/svc/a//") == []
    assert keys(f"{ns}/meta/election/svc/a//") == []
