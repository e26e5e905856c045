"""The Redis driver's sync kept connections (``tenure._resp``): replies read as redis-py reads
them, on a real server (every reply kind our commands get, one larger than a read), and the
connection handling around them: a lost reply, a silent server, an error reply. The asyncio
twins are in ``test_redis_hot_path.py``."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import tenure
from tenure import _resp
from tenure._sync.backends._redis_common import pack_command
from tenure.errors import BackendError, BackendTimeoutError
from tests.servers import RedisServer, TcpProxy

pytestmark = pytest.mark.server("redis")


@pytest.fixture
def ns() -> str:
    return "r" + uuid.uuid4().hex[:10]


@pytest.fixture
def connections(redis_server: RedisServer) -> Iterator[tuple[Any, Any]]:
    """Two connections as tenure makes them (decoded replies): ours, and redis-py's reader's."""
    pool = redis.ConnectionPool(
        host=redis_server.host, port=redis_server.port, decode_responses=True
    )
    ours, theirs = pool.make_connection(), pool.make_connection()
    ours.connect()
    theirs.connect()
    yield ours, theirs
    ours.disconnect()
    theirs.disconnect()
    pool.disconnect()


BIG = 200_000  # bytes: more than one read (64 KiB)

COMMANDS: list[tuple[Any, ...]] = [
    ("PING",),  # +PONG
    ("SET", "resp:k", "значение ✓"),  # +OK
    ("GET", "resp:k"),  # $ bulk, UTF-8
    ("GET", "resp:missing"),  # $-1
    ("STRLEN", "resp:k"),  # :integer
    ("EVAL", "return {1, 'two', {3, false, 'four'}, {}}", 0),  # nested, nil in an array
    ("EVAL", f"return string.rep('x', {BIG})", 0),  # one reply, several reads
    ("EVAL", "local t = {} for i = 1, 5000 do t[i] = i end return t", 0),  # long array
    ("BLPOP", "resp:empty", 0.01),  # *-1 (a timed-out BLPOP)
    ("EVAL", "redis.call('DEL', KEYS[1]) redis.call('RPUSH', KEYS[1], 'v', 'w') "
     "return redis.call('LRANGE', KEYS[1], 0, -1)", 1, "resp:list"),
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(map(str, c))[:40] for c in COMMANDS])
def test_replies_read_as_redis_py_reads_them(
    connections: tuple[Any, Any], command: tuple[Any, ...]
) -> None:
    ours, theirs = connections  # (every command gives the same reply twice running)
    theirs.send_packed_command([pack_command(*command)], check_health=False)
    expected = theirs.read_response()
    got = _resp.exchange(ours, pack_command(*command))
    assert got == expected
    assert _resp.exchange(ours, pack_command("PING")) == "PONG"  # nothing left unread


def test_an_error_reply_is_raised_and_read_whole(connections: tuple[Any, Any]) -> None:
    ours, _ = connections
    with pytest.raises(redis.ResponseError, match="boom"):
        _resp.exchange(ours, pack_command("EVAL", "return redis.error_reply('boom')", 0))
    with pytest.raises(redis.ResponseError, match="unknown command"):
        _resp.exchange(ours, pack_command("NOSUCHCOMMAND"))
    assert _resp.exchange(ours, pack_command("ECHO", "after")) == "after"


def test_a_closed_connection_is_a_connection_error(connections: tuple[Any, Any]) -> None:
    ours, theirs = connections
    ours_id = _resp.exchange(ours, pack_command("CLIENT", "ID"))
    theirs.send_packed_command([pack_command("CLIENT", "KILL", "ID", ours_id)])
    assert theirs.read_response() == 1
    with pytest.raises(redis.ConnectionError):  # EOF, or a reset
        _resp.exchange(ours, pack_command("PING"))


def _replies_pair_up(client: tenure.Client, lock: tenure.Lock, name: str, times: int) -> None:
    """``times`` acquire, holder(), release on ``lock``: each reply answers its own command."""
    for _ in range(times):
        assert lock.acquire(timeout=5)
        holder = client.holder(name)
        assert holder is not None
        assert holder.token == lock.token
        lock.release()


@contextlib.contextmanager
def _through(proxy: TcpProxy, ns: str, name: str) -> Iterator[tuple[tenure.Client, tenure.Lock]]:
    """A client through ``proxy`` (socket timeout 0.5 s) and its lock ``name``, taken and
    released once (connected: the next reply is a script's); the proxy healed at the end."""
    url = proxy.url_for("redis", "/0") + f"?namespace={ns}&socket_timeout=0.5"
    with tenure.connect(url) as client:
        try:
            lock = client.lock(name)
            assert lock.acquire(timeout=5)
            lock.release()
            yield client, lock
        finally:
            proxy.heal()


def test_a_lost_reply_times_out_and_the_retry_finds_its_grant(
    redis_proxy: TcpProxy, ns: str
) -> None:
    with _through(redis_proxy, ns, "lost-reply") as (client, lock):
        redis_proxy.drop_next_reply()
        started = time.monotonic()
        assert lock.acquire(timeout=10)
        assert time.monotonic() - started >= 0.4  # the reply was waited for
        assert [h.token for h in client.contenders("lost-reply")] == [lock.token]
        lock.release()
        assert client.holder("lost-reply") is None
        # The connection that lost its reply was closed: the next calls pair up.
        _replies_pair_up(client, lock, "lost-reply", 5)


def test_a_silent_server_is_a_timeout_bounded_by_socket_timeout(
    redis_proxy: TcpProxy, ns: str
) -> None:
    with _through(redis_proxy, ns, "silent") as (_, lock):
        redis_proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError):
            lock.acquire(timeout=1.0)
        # The deadline (1 s) plus at most one socket timeout (0.5 s) for the attempt.
        assert time.monotonic() - started < 1.0 + 0.5 + 1.0
        redis_proxy.heal()
        assert lock.acquire(timeout=5)
        lock.release()


def test_an_error_reply_is_a_backend_error_and_the_connection_stays_usable(
    redis_server: RedisServer, ns: str
) -> None:
    raw = redis.Redis(host=redis_server.host, port=redis_server.port)
    with tenure.connect(f"{redis_server.url}?namespace={ns}") as client:
        try:
            lock = client.lock("wrong-type")
            raw.set(f"{ns}:{{lock/wrong-type}}:queue", "not a sorted set")
            with pytest.raises(BackendError, match="WRONGTYPE"):
                lock.acquire(timeout=1)
            raw.delete(f"{ns}:{{lock/wrong-type}}:queue")
            _replies_pair_up(client, lock, "wrong-type", 3)  # the error was read whole
        finally:
            raw.close()


def test_a_read_bounded_by_a_timeout_restores_the_socket_timeout(
    connections: tuple[Any, Any],
) -> None:
    """Redlock reads each master's reply by one deadline: a read that waits longer is a timeout
    (the connection is then closed by the driver), and either way the socket keeps its own
    timeout for the calls after."""
    ours, _ = connections
    own_timeout = ours._sock.gettimeout()
    _resp.send(ours, pack_command("ECHO", "quick"))
    assert _resp.read(ours, 1.0) == "quick"
    assert ours._sock.gettimeout() == own_timeout
    _resp.send(ours, pack_command("BLPOP", "resp:never", 2))
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        _resp.read(ours, 0.1)
    assert time.monotonic() - started < 1.0
    assert ours._sock.gettimeout() == own_timeout
