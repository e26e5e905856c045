"""One command and its reply on a blocking redis-py connection's socket, for the sync hot path.

redis-py's sync reply reader walks a chain of Python calls per reply line (about 80 calls a
grant, three replies): more client CPU than the round trip's own system calls. The Redis
driver's kept connections (``_redis_common.OwnConnection``) therefore write the packed command
to the socket and parse the reply here: the replies our scripts and ``BLPOP`` get (integers,
strings, nulls, errors, arrays of these; anything else is ``InvalidResponse`` and the
connection is closed). The asyncio twin parses with :func:`whole` as the bytes arrive
(``_async/backends/_redis_common._Replies``).

Raises what redis-py's ``read_response`` raises: ``TimeoutError`` and ``ConnectionError`` from
``redis.exceptions`` (the connection must then be closed: a reply may still be on its way), and
returns an error reply as its ``ResponseError`` (raised by :func:`exchange` at the top level).
"""

from __future__ import annotations

import contextlib
from typing import Any

from redis import exceptions as redis_errors

__all__ = ["Incomplete", "exchange", "parse", "read", "send", "whole"]

_READ_SIZE = 64 * 1024


class Incomplete(Exception):
    """The buffer ends inside the reply: read more."""


def exchange(conn: Any, command: bytes) -> Any:
    """Send ``command`` (``pack_command``'s bytes) on ``conn`` (a connected redis-py sync
    ``Connection``, no reply pending) and return its reply."""
    send(conn, command)
    return read(conn)


def send(conn: Any, command: bytes) -> None:
    """Write ``command`` on ``conn``; its reply is for :func:`read`."""
    sock = conn._sock
    if sock is None:
        raise redis_errors.ConnectionError("Connection closed by the server before write")
    try:
        sock.sendall(command)
    except TimeoutError:  # (socket.timeout, since Python 3.10)
        raise redis_errors.TimeoutError("Timeout writing to socket") from None
    except OSError as exc:
        raise redis_errors.ConnectionError(f"Error while writing to the server: {exc!r}") from exc


def read(conn: Any, timeout: float | None = None) -> Any:
    """The reply due on ``conn``; waiting at most ``timeout`` seconds when given (else the
    connection's socket timeout, which is restored afterwards)."""
    sock = conn._sock
    if sock is None:
        raise redis_errors.ConnectionError("Connection closed by the server")
    if timeout is not None:
        sock.settimeout(timeout)
    try:
        buf = sock.recv(_READ_SIZE)
        while True:
            if not buf:
                raise redis_errors.ConnectionError("Connection closed by server.")
            try:
                return whole(buf, conn)
            except Incomplete:
                more = sock.recv(_READ_SIZE)
                buf = buf + more if more else b""
    except TimeoutError:  # (socket.timeout, since Python 3.10)
        raise redis_errors.TimeoutError("Timeout reading from socket") from None
    except OSError as exc:
        raise redis_errors.ConnectionError(f"Error while reading from the server: {exc!r}") from exc
    finally:
        if timeout is not None:
            with contextlib.suppress(OSError):  # (closed meanwhile: nothing to restore)
                sock.settimeout(conn.socket_timeout)


def whole(buf: bytes, conn: Any) -> Any:
    """The one reply ``buf`` holds: its value (an error reply raised as its ``ResponseError``);
    ``Incomplete`` if ``buf`` ends inside it, ``InvalidResponse`` if more follows (nothing else
    was asked: the stream is out of step)."""
    reply, end = parse(buf, 0, conn)
    if end != len(buf):
        raise redis_errors.InvalidResponse("unexpected data after a reply from redis")
    if isinstance(reply, redis_errors.ResponseError):
        raise reply
    return reply


def parse(buf: bytes, pos: int, conn: Any) -> tuple[Any, int]:
    """The reply that starts at ``pos``, and where it ends; ``Incomplete`` if ``buf`` does."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        raise Incomplete
    kind, rest, pos = buf[pos], buf[pos + 1 : eol], eol + 2
    if kind == 0x3A:  # ":" integer
        return int(rest), pos
    if kind == 0x24:  # "$" bulk string
        size = int(rest)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise Incomplete
        return conn.encoder.decode(buf[pos : pos + size]), pos + size + 2
    if kind in (0x2A, 0x7E):  # "*" array, "~" set
        size = int(rest)
        if size < 0:
            return None, pos
        items = []
        for _ in range(size):
            item, pos = parse(buf, pos, conn)
            items.append(item)
        return items, pos
    if kind == 0x2B:  # "+" simple string
        return conn.encoder.decode(rest), pos
    if kind == 0x5F:  # "_" null
        return None, pos
    if kind == 0x23:  # "#" boolean
        return rest == b"t", pos
    if kind == 0x2D:  # "-" error
        error = conn._parser.parse_error(rest.decode("utf-8", errors="replace"))
        if isinstance(error, redis_errors.ConnectionError):
            raise error  # (LOADING and the like, as redis-py raises them)
        return error, pos
    raise redis_errors.InvalidResponse(f"unexpected reply from redis: {buf[:40]!r}")
