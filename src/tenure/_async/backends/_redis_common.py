"""What the Redis and Redlock drivers share: options, the scripts, their replies, the connection
kept for the hot path, and the one place where redis-py's exceptions become ``tenure.errors``.

The key layout and the scripts are in ``tenure._redis_lua``.
"""

from __future__ import annotations

import asyncio  # tenure: async-only
import datetime as dt
import json
import os
import threading
from collections.abc import Sequence
from typing import Any, cast

from redis import exceptions as redis_errors

from ... import _redis_lua as lua
from ... import _resp
from ..._types import Holder
from ..._url import ParsedURL
from ...errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
)
from .base import KINDS, Mode

__all__ = [
    "LIST",
    "SSL_OPTIONS",
    "ErrorBoundary",
    "OwnConnection",
    "Scripts",
    "database",
    "entry_key",
    "from_us",
    "holders_from_reply",
    "key_of",
    "mode_args",
    "ms",
    "pack_command",
    "prefix",
    "reply_from_json",
    "scan_pattern",
    "ssl_settings",
]

SSL_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")

#: The scripts' one-letter modes and the names ``Holder.mode`` reports.
_MODES = {"x": "exclusive", "s": "shared", "p": "permit"}
_LETTERS = {name: letter for letter, name in _MODES.items()}


def database(url: ParsedURL) -> int:
    """The database number in the URL's path (``/0`` by default)."""
    text = url.path.strip("/") or "0"
    if not text.isdigit():
        raise ConfigurationError(f"redis database must be a number, got {text!r}")
    return int(text)


def ssl_settings(options: dict[str, str], tls: bool, scheme: str) -> dict[str, Any]:
    """redis-py's TLS keyword arguments from the ``ssl_*`` options (``tls``: a TLS scheme)."""
    if not tls:
        if any(name.startswith("ssl_") for name in options):
            raise ConfigurationError(f"ssl_* options need a {scheme} URL")
        return {}
    return {"ssl": True, **{name: options[name] for name in SSL_OPTIONS if name in options}}


class Scripts:
    """The scripts registered on one client (called by SHA, reloaded after NOSCRIPT)."""

    __slots__ = ("acquire", "check", "inspect", "leave", "raise_token", "release", "renew",
                 "set_value")  # fmt: skip

    def __init__(self, client: Any) -> None:
        self.acquire: Any = client.register_script(lua.ACQUIRE)
        self.release: Any = client.register_script(lua.RELEASE)
        self.leave: Any = client.register_script(lua.LEAVE)
        self.raise_token: Any = client.register_script(lua.RAISE)
        self.renew: Any = client.register_script(lua.RENEW)
        self.set_value: Any = client.register_script(lua.SET_VALUE)
        self.check: Any = client.register_script(lua.CHECK)
        self.inspect: Any = client.register_script(lua.INSPECT)


def prefix(namespace: str, key: str) -> str:
    """The keys of one name share this prefix, and so one hash tag (one Cluster slot)."""
    return f"{namespace}:{{{key}}}:"


def entry_key(p: str, mode: Mode) -> str:
    """The key a holder's entry is renewed and checked under: ``holder`` or ``shared``."""
    return p + ("shared" if mode.shared else "holder")


def mode_args(mode: Mode) -> list[Any]:
    """A mode as the acquire script's last two arguments."""
    return [_LETTERS[mode.name], mode.limit]


def holders_from_reply(key: str, reply: Sequence[Any]) -> tuple[list[Holder], list[Holder]]:
    """The holders (exclusive first, then shared by token) and waiters of an ``INSPECT`` reply."""
    name = key.partition("/")[2]
    found, waiting = reply[0], reply[1]
    holders = [
        _holder(name, owner, mode, meta_text, value, token=int(token), acquired_at=from_us(at),
                expires_in=max(0.0, int(expires_ms) / 1000) if int(expires_ms) >= 0 else None,
                ended=bool(int(ended[0])) if ended else False)
        for owner, token, at, expires_ms, mode, meta_text, value, *ended in found
    ]  # fmt: skip
    holders.sort(key=lambda h: (h.mode != "exclusive", h.token))
    waiters = [
        _holder(name, owner, mode, meta_text, None, token=0, acquired_at=None, waiting=True)
        for owner, mode, meta_text in waiting
    ]
    return holders, waiters


def _holder(
    name: str, owner: str, mode: str, meta_text: str, value: str | None, **fields: Any
) -> Holder:
    meta = json.loads(meta_text)
    return Holder(
        name=name,
        owner=owner,
        host=meta.get("host", ""),
        pid=int(meta.get("pid", 0)),
        value=json.loads(value) if value is not None else meta.get("value"),
        mode=_MODES[mode],
        **fields,
    )


def from_us(micros: int | str) -> dt.datetime:
    """A server time in microseconds since the epoch (the scripts' ``at``) as an aware datetime."""
    return _EPOCH + dt.timedelta(microseconds=int(micros))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def pack_command(*args: str | int | float) -> bytes:
    """One command in the Redis protocol, encoded as redis-py's encoder does (UTF-8 strings,
    ``repr`` of numbers) but in one piece: its general packer costs more than the round trip's
    own CPU on the hot path, and our commands are small."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else repr(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class OwnConnection:
    """A connection a driver keeps for its hot path, so a call skips the pool's bookkeeping;
    while it is busy (another thread or task), pool connections are used. Made again in a
    forked child (never the parent's socket). Give every connection back with ``give_back``,
    ``broken=True`` when a reply may still be on its way. A new or broken connection is
    connected explicitly, as the pool does: a Sentinel connection looks the master up there.
    ``call`` does all that for one command."""

    # tenure: begin async-only
    __slots__ = ("_busy", "_conn", "_pid", "_pool", "_replies", "_timeout", "_unconnected")
    # tenure: end async-only
    # tenure: sync __slots__ = ("_busy", "_conn", "_pid", "_pool", "_timeout", "_unconnected")

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._conn: Any = None
        self._busy = threading.Lock()
        self._pid = 0
        self._unconnected = True
        self._replies: _Replies | None = None  # tenure: async-only
        #: The pool's socket timeout: ``call`` bounds a whole command (send and reply) by it.
        self._timeout: float | None = pool.connection_kwargs.get("socket_timeout")

    async def take(self) -> Any:
        if self._pid != os.getpid():
            self._conn = self._pool.make_connection()
            self._busy = threading.Lock()
            self._pid = os.getpid()
            self._unconnected = True
        if self._busy.acquire(blocking=False):
            if self._unconnected:
                try:
                    await self._conn.connect()
                    self._replies = _Replies(self._conn)  # tenure: async-only
                except BaseException:
                    self._busy.release()
                    raise
                self._unconnected = False
            return self._conn
        return await self._pool.get_connection()

    async def give_back(self, conn: Any, *, broken: bool) -> None:
        if broken:
            await conn.disconnect()
        if conn is self._conn:
            self._unconnected = self._unconnected or broken
            self._busy.release()
        else:
            await self._pool.release(conn)

    async def call(self, command: bytes) -> Any:
        """Send one packed command (``pack_command``) and return its reply; redis-py's
        exceptions as its ``read_response`` raises them (an error reply: ``ResponseError``).
        A connection whose reply may still be on its way (an error, a timeout, cancellation)
        is closed, never reused."""
        conn = await self.take()
        broken = True
        try:
            await self.send(conn, command)
            reply = await self.read(conn)
            broken = False
        except redis_errors.ResponseError:
            broken = False  # the whole reply was read
            raise
        finally:
            await self.give_back(conn, broken=broken)
        return reply

    async def send(self, conn: Any, command: bytes) -> None:
        """Write ``command`` on ``conn`` (from ``take``); its reply is for ``read``."""
        # tenure: begin async-only
        if conn is self._conn and self._replies is not None:
            self._replies.send(command)
        else:
            await conn.send_packed_command([command], check_health=False)
        # tenure: end async-only
        # (redis-py's reader costs more than the round trip: ``tenure._resp``, on our
        # connection and on a pool's alike; asyncio: ``_Replies`` on ours.)
        # tenure: sync _resp.send(conn, command)

    async def read(self, conn: Any, timeout: float | None = None) -> Any:
        """The reply due on ``conn``, waiting at most ``timeout`` seconds (None: the socket
        timeout); redis-py's exceptions (an error reply: ``ResponseError``)."""
        # tenure: begin async-only
        if timeout is None:
            timeout = self._timeout
        if conn is self._conn and self._replies is not None:
            return await self._replies.read(timeout)
        try:
            async with asyncio.timeout(timeout):
                return await conn.read_response()
        except TimeoutError:
            raise redis_errors.TimeoutError("Timeout reading from the socket") from None
        # tenure: end async-only
        # tenure: sync return _resp.read(conn, timeout)

    async def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            await self._conn.disconnect()


# tenure: begin async-only
#: What one read of a kept connection may take at most (asyncio's default, 256 KiB, is above
#: glibc's mmap threshold: every read mapped, shrunk and unmapped a fresh buffer, three system
#: calls and a page fault per reply; 64 KiB comes from the heap, as redis-py's sync reads do).
_READ_SIZE = 64 * 1024


class _Replies(asyncio.Protocol):
    """The protocol of a kept connection's transport once redis-py's handshake is done:
    ``send`` writes a command and its reply is parsed as the bytes arrive (``tenure._resp``),
    ``read``'s caller woken once, when it is whole. redis-py's stream reader (a coroutine per
    reply line, its own future per read) and an ``asyncio.timeout`` per call cost more client
    CPU than the round trip itself. Everything else the transport reports (closed, end of
    stream, writing paused) goes on to redis-py's own protocol, so its connection's state and
    ``disconnect`` stay as they were."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._transport: Any = conn._writer.transport
        self._stream: Any = self._transport.get_protocol()
        self._loop = asyncio.get_running_loop()
        self._buf = b""
        self._waiter: asyncio.Future[Any] | None = None
        self._closed = False
        if getattr(self._transport, "max_size", 0) > _READ_SIZE:  # selector transports
            self._transport.max_size = _READ_SIZE
        self._transport.set_protocol(self)

    def send(self, command: bytes) -> None:
        """Write ``command``; its reply is for :meth:`read` (and may arrive before)."""
        if self._closed or self._transport.is_closing():
            raise redis_errors.ConnectionError("Connection closed by the server before write")
        self._waiter = self._loop.create_future()
        self._transport.write(command)

    async def read(self, timeout: float | None) -> Any:
        """The reply of the command sent (an error reply raised as redis-py's
        ``ResponseError``); redis-py's ``TimeoutError`` after ``timeout`` seconds. After any
        other exception, or cancellation, the connection must be closed."""
        waiter = self._waiter
        if waiter is None:
            raise redis_errors.InvalidResponse("no command sent: no reply to read")
        timer = None if timeout is None else self._loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        waiter = self._waiter
        if waiter is None or waiter.done():  # nobody asked (a reply after a timeout)
            self._buf, self._closed = b"", True  # out of step: never used again
            return
        try:
            reply = _resp.whole(buf, self._conn)
        except _resp.Incomplete:
            self._buf = buf
            return
        except redis_errors.RedisError as exc:  # an error reply, or out of step
            self._buf = b""
            waiter.set_exception(exc)
            return
        self._buf = b""
        waiter.set_result(reply)

    def _fail(self, what: str) -> None:
        self._closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(redis_errors.ConnectionError(what))

    def eof_received(self) -> bool | None:
        self._fail("Connection closed by server.")
        return cast("bool | None", self._stream.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"Error while talking to the server: {exc!r}")
        self._stream.connection_lost(exc)

    def pause_writing(self) -> None:
        self._stream.pause_writing()

    def resume_writing(self) -> None:
        self._stream.resume_writing()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(redis_errors.TimeoutError("Timeout reading from the socket"))


# tenure: end async-only


class ErrorBoundary:
    """``with ErrorBoundary(address, user, what):`` translates redis-py's exceptions to
    :mod:`tenure.errors`, naming the server and never the password. A plain class: cheaper
    than a generator context manager on the per-acquire path.
    """

    __slots__ = ("_address", "_user", "_what")

    def __init__(self, address: str, user: str | None, what: str) -> None:
        self._address = address
        self._user = user
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, redis_errors.RedisError | redis_errors.RedisClusterException):
            raise self.translate(exc) from exc

    def translate(self, exc: Exception) -> Exception:
        where, what = self._address, self._what
        if isinstance(exc, redis_errors.AuthenticationError):
            return ConfigurationError(
                f"redis at {where} rejected the credentials"
                + (f" of user {self._user!r}" if self._user else "")
                + f": {exc}"
            )
        if isinstance(exc, redis_errors.TimeoutError):
            return BackendTimeoutError(f"redis at {where} timed out ({what})")
        if isinstance(exc, redis_errors.ConnectionError | redis_errors.RedisClusterException):
            return BackendUnavailableError(f"redis at {where} is unreachable ({what}): {exc}")
        return BackendError(f"redis at {where} failed ({what}): {exc}")


# Listing (``tenure ls``).

#: The suffixes of the keys that exist while a name has holders or waiters (``<p>token`` stays
#: after the last release, so it does not count).
_LIVE_SUFFIXES = ("}:holder", "}:shared", "}:queue")


def scan_pattern(namespace: str) -> str:
    """The SCAN ``MATCH`` pattern of every key of ``namespace`` (glob characters escaped)."""
    escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in namespace)
    # Only keys ending in }:holder, }:shared or }:queue (and a few that key_of then drops): the
    # server filters out the fencing counters, which outlive the names' use.
    return escaped + ":{*}:[hsq][ohu][lae]*"


def key_of(namespace: str, redis_key: str) -> str | None:
    """The ``<kind>/<name>`` of a key a name has while in use, else None."""
    start = namespace + ":{"
    if not redis_key.startswith(start):
        return None
    for suffix in _LIVE_SUFFIXES:
        if redis_key.endswith(suffix):
            key = redis_key[len(start) : -len(suffix)]
            return key if key.partition("/")[0] in KINDS and "/" in key else None
    return None


async def names_in_use(client: Any, namespace: str, count: int) -> set[str]:
    """The ``<kind>/<name>`` of every name in use in ``namespace`` on one server: one SCAN pass
    (``count`` keys a step) over its keys."""
    found: set[str] = set()
    async for redis_key in client.scan_iter(match=scan_pattern(namespace), count=count):
        key = key_of(namespace, redis_key)
        if key is not None:
            found.add(key)
    return found


def _list_script() -> str:
    """``INSPECT`` over every key it is given (one script call per batch of names), each key's
    reply one JSON string: one bulk string to parse per name instead of a nested array."""
    start = lua.INSPECT.index("local p = prefix_of(KEYS[1])")
    body = lua.INSPECT[start:].replace("KEYS[1]", "key")
    return (
        lua.INSPECT[:start]
        + "local function inspect(key)\n"
        + body
        + "\nend\nlocal out = {}\n"
        + "for i, key in ipairs(KEYS) do out[i] = cjson.encode(inspect(key)) end\n"
        + "return out\n"
    )


#: KEYS: the ``<p>holder`` of each name. Returns each name's ``INSPECT`` reply as JSON.
LIST = _list_script()


def reply_from_json(text: str) -> list[Any]:
    """An ``INSPECT`` reply back from ``LIST``'s JSON (Lua's false is nil; an empty table is
    ``{}``)."""
    found, waiting, limit = json.loads(text)
    return [
        [[None if field is False else field for field in h] for h in found or []],
        list(waiting or []),
        limit,
    ]
