"""The Redis driver's kept connections under asyncio: replies parsed as redis-py reads them
(every reply kind, one larger than a read), one timeout bounds a whole command (send and
reply), a connection whose reply may still come is never reused, a cancelled wait leaves
nothing behind, and the commands are packed as redis-py packs them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis
import redis.asyncio
from redis.connection import Connection

from tenure import aio
from tenure._async.backends._redis_common import OwnConnection, _Replies, pack_command
from tenure.errors import BackendError, BackendTimeoutError
from tests.backends.test_redis_resp import COMMANDS
from tests.servers import RedisServer, TcpProxy
from tests.servers.process import free_port
from tests.servers.tls import make_certificates

pytestmark = pytest.mark.server("redis")


@pytest.fixture
def ns() -> str:
    return "h" + uuid.uuid4().hex[:10]


@pytest.fixture
def proxied(redis_proxy: TcpProxy, ns: str) -> str:
    return redis_proxy.url_for("redis", "/0") + f"?namespace={ns}&socket_timeout=0.5"


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "0" * 40, 1, "ns:{lock/a}:holder", "o1", 30000, '{"pid": 1}', "q", "x", 0),
        ("BLPOP", "ns:{lock/a}:s:o1", 0.001),
        ("BLPOP", "k", 4.5),
        ("SET", "ключ", "значение ✓", -7),
    ],
)
def test_commands_are_packed_as_redis_py_packs_them(args: tuple[str | int | float, ...]) -> None:
    expected = b"".join(Connection().pack_command(*args))
    assert pack_command(*args) == expected


async def test_replies_read_as_redis_py_reads_them(redis_server: RedisServer) -> None:
    """The kept connection's protocol parses each reply as its bytes arrive: the same values as
    redis-py's reader for every kind, a reply split over several reads, error replies raised
    with the connection still in step, and a connection killed by the server an error (the next
    call connects again)."""
    pool = redis.asyncio.ConnectionPool(
        host=redis_server.host, port=redis_server.port, decode_responses=True
    )
    theirs = pool.make_connection()  # (redis-py's reader, without its response callbacks)
    await theirs.connect()
    own = OwnConnection(pool)
    try:
        for command in COMMANDS:
            await theirs.send_packed_command([pack_command(*command)], check_health=False)
            expected = await theirs.read_response()
            assert await own.call(pack_command(*command)) == expected, command
            assert await own.call(pack_command("PING")) == "PONG"  # nothing left unread
        with pytest.raises(redis.ResponseError, match="boom"):
            await own.call(pack_command("EVAL", "return redis.error_reply('boom')", 0))
        assert await own.call(pack_command("ECHO", "after")) == "after"
        ours_id = await own.call(pack_command("CLIENT", "ID"))
        await theirs.send_packed_command([pack_command("CLIENT", "KILL", "ID", ours_id)])
        assert await theirs.read_response() == 1
        with pytest.raises(redis.ConnectionError):  # EOF, or a reset
            await own.call(pack_command("PING"))
        assert await own.call(pack_command("ECHO", "again")) == "again"
    finally:
        await own.close()
        await theirs.disconnect()
        await pool.disconnect()


async def test_tls_replies_go_through_the_kept_connections_protocol(
    tmp_path: Path, ns: str
) -> None:
    """rediss://: the kept connections' protocol sits on asyncio's TLS transport (it gets the
    decrypted bytes): a reply larger than a TLS record arrives whole, and a waiter's BLPOP is
    answered by a release's grant."""
    files = make_certificates(tmp_path)
    tls_port = free_port()
    tls = ["--tls-port", str(tls_port), "--tls-cert-file", str(files["server"]),
           "--tls-key-file", str(files["server-key"]), "--tls-ca-cert-file", str(files["ca"]),
           "--tls-auth-clients", "no"]  # fmt: skip
    with RedisServer(tmp_path, extra=tls).start():
        url = f"rediss://127.0.0.1:{tls_port}/0?namespace={ns}&ssl_ca_certs={files['ca']}"
        first, second = await aio.connect(url), await aio.connect(url)
        try:
            holder, waiter = first.lock("tls"), second.lock("tls")
            assert await holder.acquire(timeout=5)
            own = first._driver._own  # type: ignore[attr-defined]
            assert isinstance(own._replies, _Replies)  # the path under test
            big = await own.call(pack_command("EVAL", "return string.rep('x', 200000)", 0))
            assert big == "x" * 200_000
            waiting = asyncio.create_task(waiter.acquire(timeout=5))
            await wait_until(lambda: _queued(first, "tls"))
            token = holder.token
            await holder.release()
            assert await waiting
            assert waiter.token > token
            await waiter.release()
        finally:
            await first.close()
            await second.close()


async def _queued(client: aio.Client, name: str) -> bool:
    return len(await client.contenders(name)) == 2


async def _replies_pair_up(client: aio.Client, lock: aio.Lock, name: str, times: int) -> None:
    """``times`` acquire, holder(), release on ``lock``: each reply answers its own command."""
    for _ in range(times):
        assert await lock.acquire(timeout=5)
        holder = await client.holder(name)
        assert holder is not None
        assert holder.token == lock.token
        await lock.release()


async def test_a_lost_reply_times_out_and_the_retry_finds_its_grant(
    redis_proxy: TcpProxy, proxied: str
) -> None:
    client = await aio.connect(proxied)
    try:
        lock = client.lock("lost-reply")
        assert await lock.acquire(timeout=5)  # connected: the next reply is a script's
        await lock.release()
        redis_proxy.drop_next_reply()
        started = time.monotonic()
        assert await asyncio.wait_for(lock.acquire(timeout=10), 10)  # not stuck on the socket
        assert time.monotonic() - started >= 0.4  # the reply was waited for, socket_timeout
        holders = await client.contenders("lost-reply")
        assert [h.token for h in holders] == [lock.token]
        await lock.release()
        assert await client.holder("lost-reply") is None
        # The connection that lost its reply was closed: the next calls pair up correctly.
        await _replies_pair_up(client, lock, "lost-reply", 5)
    finally:
        redis_proxy.heal()
        await client.close()


async def test_a_silent_server_is_a_timeout_bounded_by_socket_timeout(
    redis_proxy: TcpProxy, proxied: str
) -> None:
    client = await aio.connect(proxied)
    try:
        lock = client.lock("silent")
        assert await lock.acquire(timeout=5)
        await lock.release()
        redis_proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError):
            await asyncio.wait_for(lock.acquire(timeout=1.0), 10)
        # The deadline (1 s) plus at most one socket timeout (0.5 s) for the attempt under way.
        assert time.monotonic() - started < 1.0 + 0.5 + 1.0
        redis_proxy.heal()
        assert await lock.acquire(timeout=5)
        await lock.release()
    finally:
        redis_proxy.heal()
        await client.close()


async def test_a_cancelled_wait_leaves_nothing_and_the_next_wait_works(
    redis_server: RedisServer, ns: str
) -> None:
    url = f"{redis_server.url}?namespace={ns}"
    a, b = await aio.connect(url), await aio.connect(url)
    try:
        held = a.lock("cancelled")
        assert await held.acquire()
        waiter = b.lock("cancelled")
        task = asyncio.ensure_future(waiter.acquire(timeout=30))

        async def queued(n: int) -> bool:
            return len(await a.contenders("cancelled")) == n

        await wait_until(lambda: queued(2))
        await asyncio.sleep(0.05)  # let it block in BLPOP, not in the first script call
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not waiter.held
        assert [h.token for h in await a.contenders("cancelled")] == [held.token]
        # A new wait on the same client (its wait connection made again) is woken by the release.
        task = asyncio.ensure_future(waiter.acquire(timeout=30))
        await wait_until(lambda: queued(2))
        await held.release()
        assert await asyncio.wait_for(task, 10)
        holder = await a.holder("cancelled")
        assert holder is not None
        assert holder.token == waiter.token
        await waiter.release()
        assert await a.contenders("cancelled") == []
    finally:
        await a.close()
        await b.close()


async def test_a_flushed_script_cache_is_transparent(redis_server: RedisServer, ns: str) -> None:
    client = await aio.connect(f"{redis_server.url}?namespace={ns}")
    raw = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        lock = client.lock("flushed")
        assert await lock.acquire()
        raw.script_flush()
        await lock.release()  # NOSCRIPT on our connection: loaded again, run once
        assert await lock.acquire()
        assert await client.holder("flushed") is not None
        await lock.release()
        assert await client.holder("flushed") is None
    finally:
        raw.close()
        await client.close()


async def test_an_error_reply_is_a_backend_error_and_the_connection_stays_usable(
    redis_server: RedisServer, ns: str
) -> None:
    client = await aio.connect(f"{redis_server.url}?namespace={ns}")
    raw = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        lock = client.lock("wrong-type")
        raw.set(f"{ns}:{{lock/wrong-type}}:queue", "not a sorted set")
        with pytest.raises(BackendError, match="WRONGTYPE"):
            await lock.acquire(timeout=1)
        raw.delete(f"{ns}:{{lock/wrong-type}}:queue")
        # The error reply was read whole: the next replies pair up.
        await _replies_pair_up(client, lock, "wrong-type", 3)
    finally:
        raw.close()
        await client.close()
