"""The ``postgresql://`` backend: session-level advisory locks, queued by PostgreSQL itself.

A lock is ``pg_advisory_lock(k)`` with ``k`` a 64-bit hash of ``namespace/kind/name``. Advisory
locks belong to a server *session* (a connection), so every connection this driver opens is a
dedicated one, never pooled, and is set up at its start (libpq ``options``) so that the server
itself ends it, freeing its locks, when its client goes silent:

- ``idle_session_timeout`` = the session TTL: a client that stops sending (paused, hung,
  partitioned: its kernel may still answer TCP keepalives) loses its locks TTL seconds after its
  last statement ended. The keep-alive sends ``SELECT 1`` on every connection at TTL/3.
- ``client_connection_check_interval``, TCP keepalives and ``tcp_user_timeout`` (server and
  client side): a dead client is noticed even while it waits in a lock queue, a dead server by
  the client.

**Connections.** ``connect()`` opens one connection (checking the server, the settings and the
schema); the first session takes it as its primary, giving it its TTL's settings with one
``set_config`` statement (and its socket the client's TCP options), so that a process that only
takes locks keeps one connection; ``holder()``, ``contenders()`` and ``tenure ls`` use one of
their own, opened when first needed (or connect's, if no session took it). A tenure session
(one lease) has a *primary* connection, on which every acquire
first tries ``pg_try_advisory_lock`` (one statement: the try, the fencing token and the holder
record; one round trip). Uncontended locks are held there, so renewing them is one ``SELECT 1``
however many there are. A contender that must wait does so on a connection of its own, in
PostgreSQL's lock queue (``pg_advisory_lock``: FIFO, woken by the server, no polling), with the
deadline as ``lock_timeout``; it holds the lock there until released, then the connection is
kept as a spare for the next waiter. The keep-alive pings every connection that holds a lock
(concurrently in asyncio). A connection that breaks has lost its locks: they are reported lost.
A connection holds at most one grant per key: PostgreSQL lets a session take again a lock it
holds, past every queued waiter, so a second reader or permit of one name in one session is
tried and held on a connection of its own.

**Read-write locks** are the same lock taken ``pg_advisory_lock_shared`` by readers and
``pg_advisory_lock`` by writers. PostgreSQL's queue is the grant rule of ``base.grantable``: a
request conflicting with a queued one waits behind it (so a reader that arrives while a writer
waits queues behind the writer; the try ``pg_try_advisory_lock_shared`` is refused then too),
and a release or a timed-out waiter wakes every waiter at the head that no earlier one blocks
(one writer, or the run of readers).

**Semaphores** (``limit`` N): PostgreSQL has no counted lock, so a permit is one of N *slot*
locks (``hashtextextended(namespace/semaphore/name, i)``, i = 1..N), taken only by a contender
that holds the semaphore's *turnstile* lock ``k``. The turnstile is the queue: an acquire tries
it (and, holding it, the first free slot; it never keeps it), and a contender that must wait
queues for it in PostgreSQL's lock queue (FIFO, no polling). The one that holds it is the head:
it takes a slot as soon as one is free and then leaves the turnstile to the next. Waiting for
*any* of N locks is what PostgreSQL cannot do in one queue, so the head ``LISTEN``s: every
permit release ``NOTIFY``s in its unlock statement, and only the head listens, so a release
wakes exactly one contender. A holder whose session ends without releasing (killed, or silent
past its TTL) frees its slot but notifies nobody: the head re-checks the slots every TTL/3 of its
own session. That re-check is the one poll in this backend, and it costs nothing extra: the head
is idle between statements, so it must send one at least every TTL anyway or the server ends
its session (which is what frees the turnstile from a paused head). Queued contenders behind it
send nothing. The limit is in every holder and waiter record; a contender compares it with the
live records (holders and waiters on arrival, holders again once it holds the turnstile, which
settles every race) and leaves with ``limit_mismatch``, taking nothing.

**Tokens and records.** The fencing token is ``greatest(the key's last token + 1, the server
clock in µs)``, taken in the statement that grants (Redis's rule). The key's last token is a row
of the UNLOGGED table ``counters``: its row lock orders readers granted together, so tokens
strictly increase per key even if the clock steps back. Nothing of it is WAL-logged (a grant waits
for no WAL flush): after a crash, and on a standby promoted after its primary was lost
(asynchronous replication: it may lack the newest grants), the table starts empty and the clock
alone puts new tokens above every earlier one, provided the clock stepped back (or, for a
promotion, the two servers' clocks differ) by less than the restart or failover took.

**Records: one row written per grant.** An exclusive grant (a lock, a writer, an election) writes
its holder record (backend pid, owner id, host, pid, TTL, value, acquired_at) into the key's
``counters`` row, in the same upsert that takes the token; a reader's or a permit's record is a
row of the UNLOGGED table ``holders``, a waiter's of ``waiters``. Records are trusted only when
joined with ``pg_locks`` on the backend pid that really holds (an exclusive record: holds the key
exclusively) or waits for the lock, so a stale record never shows a holder: an exclusive
record is therefore never deleted (the next grant of the key overwrites it), nor is a lock's
queue record when its wait is granted (the connection's next wait overwrites it). Release
(``release()``) is ``pg_advisory_unlock`` on the holding connection: owner-checked by
construction (only that server session can unlock it); an exclusive grant's release is that
alone, a reader's or a permit's also deletes its ``holders`` row. ``min_hold``: the entry is
copied into the logged ``holds`` table, and the end of the key's latest hold (exclusive:
``kept_x``, a reader's: ``kept_s``) is kept in its ``counters`` row, where the grant statement
reads it (no ``holds`` lookup per grant; a permit's slot still asks ``kept_until``). A crash or a
promotion empties ``counters`` but not ``holds``: every new connection first puts the live
holds' ends back (``restore_holds``; nothing is written when no hold is live), and every
connection that grants after a crash is a new one.

Schema objects (a schema, four tables, an index and a function) are created on first use,
idempotently, in the schema named by the ``schema`` option (default ``tenure``); a ``counters``
table made by an earlier tenure (key, token) gains the new columns then (and the live holds'
ends). A transaction-pooling proxy (pgbouncer) cannot carry session-level locks: the driver
checks that the settings it sent at connection start reached the server session, and refuses
with a clear error if they did not.
"""

from __future__ import annotations

import asyncio  # tenure: async-only
import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from ..._names import OwnerInfo, new_owner_id
from ..._types import Capabilities, Holder
from ..._url import ParsedURL
from ...errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
)
from .. import _compat
from .base import DRIFT, Grant, Lease, Mode, data_of, hold_left, limit_mismatch, refreshes

__all__ = ["PostgresDriver"]

log = logging.getLogger("tenure")

_DEFAULT_SCHEMA = "tenure"
_SCHEMA_LOCK = 0x74656E757265  # "tenure": serialises concurrent first-use schema creation
_Conn = psycopg.AsyncConnection[Any]


class _Hold:
    """``Grant.data``: the connection holding the grant, and the advisory lock it holds there
    (``k`` itself, or a semaphore's slot)."""

    __slots__ = ("conn", "k", "lock", "shared")

    def __init__(self, conn: _Conn, k: int, lock: int, shared: bool) -> None:
        self.conn = conn
        self.k = k
        self.lock = lock
        self.shared = shared


class _Pool:
    """``Lease.data``: a session's connections: primary, waiting or holding, spares."""

    def __init__(self) -> None:
        self.primary: _Conn | None = None
        self.on_primary: set[int] = set()  # keys with a grant (or a try under way) on the primary
        self.spares: list[_Conn] = []
        self.busy: set[_Conn] = set()  # waiting, or holding a grant off the primary
        self.closed = False
        self.state = _compat.StateLock()  # guards the above: sync callers are threads


class PostgresDriver:
    """Driver for ``postgresql://[user[:password]@]host[:port][/dbname][?options]``."""

    scheme: ClassVar[str] = "postgresql"
    capabilities: ClassVar[Capabilities] = Capabilities(
        leases=True,
        fifo=True,
        min_ttl=0.5,
        expiry_slack=0.1,
        wakeup="PostgreSQL's own lock queue (pg_advisory_lock); a semaphore's head: NOTIFY",
        min_hold=True,  # a holds table; grants read the ends from the key's counters row
        hold_slack=0.1,
    )
    options: ClassVar[frozenset[str]] = frozenset(
        {
            "schema",
            "connect_timeout",
            "sslmode",
            "sslrootcert",
            "sslcert",
            "sslkey",
            "application_name",
        }
    )

    def __init__(self, url: ParsedURL, *, namespace: str, options: dict[str, str]) -> None:
        hosts = url.hosts_with_default(5432)
        self._url = url
        self._namespace = namespace
        self._address = ",".join(f"{h}:{p}" for h, p in hosts)
        schema = options.get("schema", _DEFAULT_SCHEMA)
        if not schema or len(schema) > 63 or not schema.replace("_", "a").isalnum():
            raise ConfigurationError(
                f"schema must be 1-63 letters, digits or underscores, got {schema!r}"
            )
        self._schema = schema
        connect_timeout = options.get("connect_timeout", "5")
        try:
            self._connect_timeout = max(1, math.ceil(float(connect_timeout)))
        except ValueError:
            raise ConfigurationError(
                f"connect_timeout must be a number of seconds, got {connect_timeout!r}"
            ) from None
        params: dict[str, Any] = {
            "host": ",".join(h for h, _ in hosts),
            "port": ",".join(str(p) for _, p in hosts),
            "connect_timeout": self._connect_timeout,
            "application_name": options.get("application_name", "tenure"),
        }
        if url.username:
            params["user"] = url.username
        if url.password:
            params["password"] = url.password
        dbname = url.path.strip("/")
        if dbname:
            params["dbname"] = dbname
        for name in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
            if name in options:
                params[name] = options[name]
        self._params = params
        self._ready = False
        self._inspect: _Conn | None = None
        self._first: _Conn | None = None  # connect()'s, until the first session takes it
        self._sql = _Statements(schema)

    def __repr__(self) -> str:
        return f"PostgresDriver({self._url.redacted()!r})"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate psycopg's exceptions at this one boundary."""
        try:
            yield
        except pg_errors.InvalidPassword as exc:
            raise ConfigurationError(
                f"postgresql at {self._address} rejected the credentials"
                + (f" of user {self._url.username!r}" if self._url.username else "")
            ) from exc
        except (pg_errors.InvalidAuthorizationSpecification, pg_errors.InvalidCatalogName) as exc:
            raise ConfigurationError(f"postgresql at {self._address}: {_first_line(exc)}") from exc
        except pg_errors.InsufficientPrivilege as exc:
            raise ConfigurationError(
                f"postgresql at {self._address}: {_first_line(exc)} (tenure needs to create and "
                f"use the schema {self._schema!r}; grant it, or pick another with ?schema=)"
            ) from exc
        except (pg_errors.QueryCanceled, pg_errors.LockNotAvailable) as exc:
            raise BackendTimeoutError(
                f"postgresql at {self._address} timed out ({what}): {_first_line(exc)}"
            ) from exc
        except psycopg.OperationalError as exc:
            text = str(exc)
            if any(sign in text for sign in _CONFIG_ERRORS):
                # The server answered, and refused us: retrying will not help.
                raise ConfigurationError(
                    f"postgresql at {self._address} refused the connection: "
                    + text.rpartition("FATAL:")[2].strip().splitlines()[0]
                ) from exc
            raise BackendUnavailableError(
                f"postgresql at {self._address} is unreachable ({what}): {_first_line(exc)}"
            ) from exc
        except psycopg.Error as exc:
            raise BackendError(
                f"postgresql at {self._address} failed ({what}): {_first_line(exc)}"
            ) from exc

    @staticmethod
    def _session_settings(ttl: float | None) -> dict[str, int]:
        """The server session's settings for a session TTL (None: a connection that holds no
        locks): the server ends it after ``ttl`` s of silence, and notices a dead client."""
        ms = 0 if ttl is None else max(1, int(ttl * 1000))
        keepalive = max(1, int(ttl / 3)) if ttl else 10
        return {
            "idle_session_timeout": ms,
            "client_connection_check_interval": max(100, ms // 3) if ms else 0,
            "tcp_keepalives_idle": keepalive,
            "tcp_keepalives_interval": keepalive,
            "tcp_keepalives_count": 3,
            "tcp_user_timeout": ms,
        }

    async def _open(self, ttl: float | None) -> _Conn:
        """A new dedicated connection whose server session ends after ``ttl`` s of silence."""
        ms = 0 if ttl is None else max(1, int(ttl * 1000))
        marker = new_owner_id()[:16]
        keepalive = max(1, int(ttl / 3)) if ttl else 10
        settings: dict[str, int | str] = {
            **self._session_settings(ttl),
            "lock_timeout": 0,
            "statement_timeout": 0,
            # A marker read back below: proof that our settings reached this server session.
            "tenure.session": marker,
        }
        params = dict(self._params)
        params["options"] = " ".join(f"-c {k}={v}" for k, v in settings.items())
        params.update(
            keepalives=1,
            keepalives_idle=keepalive,
            keepalives_interval=keepalive,
            keepalives_count=3,
            tcp_user_timeout=ms or self._connect_timeout * 1000,
        )
        try:
            with self._errors("connect"):
                conn = await psycopg.AsyncConnection.connect(
                    autocommit=True, prepare_threshold=0, **params
                )
        except BackendError as exc:
            cause = exc.__cause__
            if cause is not None and "unsupported startup parameter" in str(cause):
                raise ConfigurationError(
                    f"{self._address} refused the session settings tenure sends at connection "
                    f"start ({_first_line(cause)}): this looks like pgbouncer or another pooler; "
                    "tenure needs a direct (or session-pooled) connection to PostgreSQL"
                ) from cause
            raise
        try:
            with self._errors("connect"):
                version = conn.info.server_version
                if version < 140000:
                    raise ConfigurationError(
                        f"postgresql at {self._address} is version {version // 10000}; tenure "
                        "needs >= 14 (idle_session_timeout ends silent sessions)"
                    )
                row = await (await conn.execute(self._sql.probe)).fetchone()
                assert row is not None
                if row[1] != marker or _ms(row[0]) != ms:
                    raise ConfigurationError(
                        "the settings tenure sends at connection start did not reach the server "
                        f"session at {self._address} (idle_session_timeout reads {row[0]!r}): a "
                        "pooler (pgbouncer?) in front of PostgreSQL? Session-level advisory "
                        "locks need a direct or session-pooled connection"
                    )
                if not self._ready:
                    await self._create_schema(conn)
                # After a crash (or a promotion) the UNLOGGED counters table is empty but the
                # logged holds table is not: put the live holds' ends back where grants read
                # them. Every connection that can grant runs this first (nothing to write,
                # no transaction ID, when no hold is live; a hot standby grants nothing).
                if conn.info.parameter_status("in_hot_standby") != "on":
                    await conn.execute(self._sql.restore_holds)
        except BaseException:
            await _close_quietly(conn)
            raise
        return conn

    async def _create_schema(self, conn: _Conn) -> None:
        row = await (await conn.execute(self._sql.exists)).fetchone()
        shape = await (await conn.execute(self._sql.shape, (self._schema,))).fetchone()
        if row is None or not row[0] or shape is None or not shape[1]:
            # (Also adds the columns an earlier tenure's counters table lacks: a migration.)
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in self._sql.create:
                    await conn.execute(statement)
            shape = await (await conn.execute(self._sql.shape, (self._schema,))).fetchone()
        # CREATE ... IF NOT EXISTS keeps a table an earlier tenure made (before the shared modes).
        if shape is None or not shape[0] or not shape[1]:
            raise ConfigurationError(
                f"schema {self._schema!r} at {self._address} was made by an earlier tenure (its "
                "holders table has no 'lim' column); once no tenure client uses it, drop it: "
                f'DROP SCHEMA "{self._schema}" CASCADE'
            )
        self._ready = True

    async def connect(self) -> None:
        # The connection that proves the server reachable (and makes the schema) becomes the
        # first session's primary (``grant_lease``): a process that only takes locks keeps one
        # connection, not two; holder() and friends open their own when first asked.
        self._first = await self._open(None)

    async def _arm(self, conn: _Conn, ttl: float) -> None:
        """Give a connection opened without a TTL (``connect``'s) a session's settings: the
        server's by ``set_config`` (one round trip), the client's TCP options on its socket."""
        settings = self._session_settings(ttl)
        names = list(settings)
        calls = ", ".join("set_config(%s, %s, false)" for _ in names)
        args: list[str] = [x for name in names for x in (name, str(settings[name]))]
        with self._errors("connect"):
            await conn.execute(f"SELECT {calls}", args)  # (placeholders only)
        _client_keepalive(conn, settings["tcp_keepalives_idle"], settings["tcp_user_timeout"])

    async def _inspector(self) -> _Conn:
        """The connection for holder()/contenders()/changes(): no locks, no idle timeout."""
        conn = self._inspect
        if conn is None or conn.closed:
            conn, self._first = self._first, None  # (no session took it: no TTL settings)
            if conn is None or conn.closed:
                conn = await self._open(None)
            if self._inspect is not None and not self._inspect.closed:
                await _close_quietly(conn)  # another task opened one meanwhile
                return self._inspect
            self._inspect = conn
        return conn

    async def close(self) -> None:
        for conn in (self._first, self._inspect):
            if conn is not None:
                await _close_quietly(conn)  # sessions close their own connections
        self._first = self._inspect = None

    # Leases: a set of dedicated connections, each ended by the server when silent for a TTL.

    async def grant_lease(self, ttl: float) -> Lease:
        pool = _Pool()
        conn, self._first = self._first, None
        if conn is not None and not conn.closed:
            try:
                await self._arm(conn, ttl)
            except BackendError:
                await _close_quietly(conn)
                conn = None
        pool.primary = conn if conn is not None and not conn.closed else await self._open(ttl)
        return Lease(id=new_owner_id()[:16], ttl=ttl, data=pool)

    async def renew_lease(
        self, lease: Lease, grants: Sequence[Grant], timeout: float
    ) -> Sequence[Grant]:
        pool = data_of(lease, _Pool)
        conns = {data_of(grant, _Hold).conn for grant in grants}
        if pool.primary is not None:
            conns.add(pool.primary)
        conns.update(pool.spares)
        order = list(conns)
        # tenure: begin async-only
        alive = await asyncio.gather(*(_ping(conn) for conn in order))
        # tenure: end async-only
        # tenure: begin sync-only
        # alive = [_ping(conn) for conn in order]
        # tenure: end sync-only
        dead = {conn for conn, ok in zip(order, alive, strict=True) if not ok}
        for conn in dead:
            await _close_quietly(conn)
            if conn is pool.primary:
                pool.primary = None
            if conn in pool.spares:
                pool.spares.remove(conn)
            pool.busy.discard(conn)
        return [grant for grant in grants if data_of(grant, _Hold).conn in dead]

    async def revoke_lease(self, lease: Lease) -> None:
        pool = data_of(lease, _Pool)
        pool.closed = True
        conns = [*pool.spares, *pool.busy]
        if pool.primary is not None:
            conns.append(pool.primary)
        pool.primary, pool.spares, pool.busy = None, [], set()
        for conn in conns:
            await _close_quietly(conn)  # the server frees whatever they still held

    # Contenders.

    def _lock_key(self, key: str) -> int:
        digest = hashlib.blake2b(f"{self._namespace}/{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def _args(self, key: str, owner: OwnerInfo, ttl: float, mode: Mode) -> dict[str, Any]:
        return {
            "k": self._lock_key(key),
            "ns": self._namespace,
            "name": key,
            "owner": owner.owner,
            "host": owner.host,
            "pid": owner.pid,
            "ttl": ttl,
            "value": json.dumps(owner.value),
            "channel": self._notify_channel(key),
            "mode": mode.name,
            "shared": mode.shared and not mode.limit,  # a permit holds its slot exclusively
            "limit": mode.limit,
            "slots": f"{self._namespace}/{key}",  # hashed with i = 1..limit: the slot locks
        }

    def _notify_channel(self, key: str) -> str:
        """The channel notified by grants and releases of an election (for observe()) and by
        releases of a semaphore's permits (for its head waiter); "" for other keys."""
        return self._channel(key) if key.startswith(("election/", "semaphore/")) else ""

    def _channel(self, key: str) -> str:
        return "tenure_" + format(self._lock_key(key) & 0xFFFFFFFFFFFFFFFF, "016x")

    async def acquire(
        self, lease: Lease, key: str, owner: OwnerInfo, deadline: float | None, mode: Mode
    ) -> Grant | None:
        while True:
            got = await self._acquire_once(lease, key, owner, deadline, mode)
            if not isinstance(got, float):
                return got
            # Granted by PostgreSQL but a min_hold entry still blocks the key (given back at
            # once): wait for the hold's end, a time the server told us (not a poll), then
            # contend again. (Waiters that meet a hold so re-queue at its end: arrival order is
            # not kept across it.)
            if deadline is not None and deadline <= _compat.monotonic():
                return None
            wait = got if deadline is None else min(got, deadline - _compat.monotonic())
            await _sleep_unless_ended(lease, wait + 0.001)

    async def _acquire_once(
        self, lease: Lease, key: str, owner: OwnerInfo, deadline: float | None, mode: Mode
    ) -> Grant | float | None:
        """One acquire; a float: seconds until a min_hold entry that blocks us ends."""
        pool = data_of(lease, _Pool)
        if pool.closed:
            raise BackendError("the session's connections are closed")
        args = self._args(key, owner, lease.ttl, mode)
        k = args["k"]
        if pool.primary is None or pool.primary.closed:
            await self._new_primary(pool, lease.ttl)
        try_once = deadline is not None and deadline <= _compat.monotonic()
        with pool.state:
            primary = pool.primary if k not in pool.on_primary else None
            if primary is not None:
                pool.on_primary.add(k)
            # If we will have to wait, it will be on a spare connection: take it now, so that
            # the try statement can write its queue record.
            spare = pool.spares.pop() if pool.spares and not (try_once and primary) else None
        if primary is not None:
            conn, waiter = primary, spare
        else:  # this session holds k on the primary already: try (and wait) on another one
            conn = waiter = spare or await self._open(lease.ttl)
            pool.busy.add(conn)
        args["wpid"] = 0 if waiter is None or try_once else waiter.info.backend_pid
        if mode.limit:
            statement = self._sql.try_permit
        else:
            statement = self._sql.try_shared if mode.shared else self._sql.try_lock
        sent = _compat.monotonic()
        try:
            with self._errors("acquire"):
                row = await (await conn.execute(statement, args)).fetchone()
        except BaseException:
            await self._after_failed_try(pool, conn, args)
            if spare is not None and spare is not conn:
                await self._recycle(pool, spare)
            raise
        assert row is not None
        got, lock, token, acquired_at, _, stored, _, kept = row
        if got and kept is not None:  # (a lock's: a permit skips kept slots)
            await self._after_failed_try(pool, conn, args)  # give it back
            if spare is not None and spare is not conn:
                await self._recycle(pool, spare)
            return float(kept)
        if got:
            if conn is primary and spare is not None:
                await self._recycle(pool, spare)
            hold = _Hold(conn, k, lock, args["shared"])
            by = _by(sent, 0, lease)
            return Grant(key, owner, int(token), lease, acquired_at, hold, by, mode)
        if conn is primary:
            pool.on_primary.discard(k)
        if stored is not None or try_once:
            if waiter is not None:
                await self._recycle(pool, waiter)
            if stored is not None:
                raise limit_mismatch(key.partition("/")[2], int(stored), mode.limit)
            return None
        return await self._wait(pool, lease, key, owner, mode, args, deadline, waiter)

    async def _new_primary(self, pool: _Pool, ttl: float) -> None:
        conn = await self._open(ttl)
        with pool.state:
            if pool.primary is None or pool.primary.closed:
                pool.primary, pool.on_primary = conn, set()
                return
        # Another caller replaced it meanwhile: keep ours as a spare.
        await self._recycle(pool, conn)

    async def _recycle(self, pool: _Pool, conn: _Conn) -> None:
        """Keep a connection that holds nothing for the next wait (closed if the pool is)."""
        pool.busy.discard(conn)
        if pool.closed or conn.closed:
            await _close_quietly(conn)
        else:
            pool.spares.append(conn)

    async def _after_failed_try(self, pool: _Pool, conn: _Conn, args: dict[str, Any]) -> None:
        """The try statement failed: it may have taken locks (its reply lost); undo that."""
        try:
            with self._errors("undo acquire"):
                await conn.execute(self._sql.undo_try, args)
        except BackendError:
            # The connection is broken: the server frees its locks when the session ends, and
            # every grant on it is reported lost at the next renewal.
            if pool.primary is conn:
                pool.primary = None
            else:
                pool.busy.discard(conn)
                await _close_quietly(conn)
            return
        if conn is pool.primary:
            pool.on_primary.discard(args["k"])
        else:
            await self._recycle(pool, conn)

    async def _wait(
        self,
        pool: _Pool,
        lease: Lease,
        key: str,
        owner: OwnerInfo,
        mode: Mode,
        args: dict[str, Any],
        deadline: float | None,
        conn: _Conn | None,
    ) -> Grant | float | None:
        """Queue in PostgreSQL's lock queue on a connection of our own until granted (for a
        permit: until we hold the turnstile, then as its head until a slot is free)."""
        queued = conn is not None  # the try statement wrote its queue record
        if conn is None:
            conn = await self._open(lease.ttl)
        pool.busy.add(conn)
        done = listening = False
        try:
            if not queued:
                with self._errors("queue"):
                    await conn.execute(self._sql.enqueue, args)
            while True:
                if deadline is None:
                    args["ms"] = "0"
                else:
                    remaining = deadline - _compat.monotonic()
                    if remaining <= 0:
                        return None
                    args["ms"] = f"{max(1, math.ceil(remaining * 1000))}ms"
                sent = _compat.monotonic()
                if mode.limit:
                    statement = self._sql.wait_permit
                else:
                    statement = self._sql.wait_shared if mode.shared else self._sql.wait_lock
                try:
                    with self._errors("wait"):
                        row = await (await conn.execute(statement, args)).fetchone()
                except BackendTimeoutError as exc:
                    if isinstance(exc.__cause__, pg_errors.LockNotAvailable):
                        return None  # our lock_timeout: the deadline passed
                    raise
                assert row is not None
                got, lock, token, acquired_at, waited, stored, _, kept = row
                if got and kept is not None:
                    return float(kept)  # a min_hold entry blocks the key: given back below
                while not got and stored is None:
                    # We hold the turnstile and no permit is free: listen (then look again, so
                    # that a release in between is not missed) and wait for a release's NOTIFY,
                    # looking again every TTL/3 for holders that ended without one.
                    if listening:
                        wait = lease.ttl / 3 if kept is None else min(lease.ttl / 3, kept)
                        if deadline is not None:
                            wait = min(wait, deadline - _compat.monotonic())
                            if wait <= 0:
                                return None
                        with self._errors("wait for a permit"):
                            async for _ in conn.notifies(timeout=wait, stop_after=1):
                                pass
                    else:
                        with self._errors("listen"):
                            await conn.execute(self._listen("LISTEN", key))
                        listening = True
                    sent = _compat.monotonic()
                    with self._errors("wait for a permit"):
                        row = await (await conn.execute(self._sql.head_permit, args)).fetchone()
                    assert row is not None
                    got, lock, token, acquired_at, waited, stored, _, kept = row
                if listening:
                    with self._errors("unlisten"):
                        await conn.execute(self._listen("UNLISTEN", key))
                    listening = False
                if stored is not None:
                    raise limit_mismatch(key.partition("/")[2], int(stored), mode.limit)
                renew_by = _by(sent, float(waited), lease)
                if _compat.monotonic() < renew_by - lease.ttl / 3:
                    done = True
                    hold = _Hold(conn, args["k"], lock, args["shared"])
                    return Grant(key, owner, int(token), lease, acquired_at, hold, renew_by, mode)
                # The grant sat in our socket so long (a paused process) that the server may end
                # the session for silence before we can renew it: give it back, queue again.
                log.warning("tenure: the grant of %r came too late to trust; queueing again", key)
                with self._errors("queue again"):
                    await conn.execute(self._sql.undo_wait, args)
                    await conn.execute(self._sql.enqueue, args)
        finally:
            if not done:
                await self._give_back(pool, conn, key, listening)

    def _listen(self, verb: str, key: str) -> sql.Composed:
        return sql.SQL("{} {}").format(sql.SQL(verb), sql.Identifier(self._channel(key)))

    async def _give_back(self, pool: _Pool, conn: _Conn, key: str, listening: bool) -> None:
        """A waiting connection is done without a grant: unlock anything, keep it as a spare."""
        try:
            with self._errors("leave"):
                # Also undoes a grant whose reply we never read (cancelled just as it came).
                await conn.execute(self._sql.undo_wait, {"channel": self._notify_channel(key)})
                if listening:
                    await conn.execute(self._listen("UNLISTEN", key))
        except BackendError:
            pool.busy.discard(conn)
            await _close_quietly(conn)  # the server ends the session and frees its locks
            return
        except BaseException:
            pool.busy.discard(conn)
            await _close_quietly(conn)
            raise
        await self._recycle(pool, conn)

    async def release(self, grant: Grant) -> bool:
        """Unlock the grant's advisory lock on the connection holding it (owner-checked: no
        other server session can unlock it), deleting its holder record; a permit's release
        also wakes the semaphore's head waiter (NOTIFY)."""
        pool, hold = data_of(grant.lease, _Pool), data_of(grant, _Hold)
        if hold.conn.closed:
            return False  # its server session ended (or is ending), which frees the lock
        args: dict[str, Any] = {
            "k": hold.k,
            "lock": hold.lock,
            "shared": hold.shared,
            "channel": self._notify_channel(grant.key),
        }
        exclusive = not grant.mode.shared  # its record is in counters: nothing to delete
        keep = hold_left(grant)
        if keep:
            # min_hold: record the hold (committed) before the unlock below.
            args["hold"] = keep
            with self._errors("release"):
                await hold.conn.execute(self._sql.keep_lock if exclusive else self._sql.keep, args)
        statement = self._sql.release_lock if exclusive else self._sql.release
        with self._errors("release"):
            row = await (await hold.conn.execute(statement, args)).fetchone()
        if hold.conn is pool.primary:
            pool.on_primary.discard(hold.k)
        elif hold.conn in pool.busy:
            await self._recycle(pool, hold.conn)
        return bool(row and row[0])

    async def check(self, grant: Grant) -> bool:
        hold = data_of(grant, _Hold)
        if hold.conn.closed:
            return False
        try:
            with self._errors("check"):
                row = await (
                    await hold.conn.execute(self._sql.check, {"lock": hold.lock})
                ).fetchone()
        except BackendUnavailableError:
            if hold.conn.closed:
                return False
            raise
        return bool(row and row[0])

    async def set_value(self, grant: Grant, value: str) -> bool:
        hold = data_of(grant, _Hold)
        if hold.conn.closed:
            return False
        args = self._args(grant.key, grant.owner, grant.lease.ttl, grant.mode)
        args["value"] = json.dumps(value)
        args["lock"] = hold.lock
        with self._errors("set value"):
            statement = self._sql.set_value if grant.mode.shared else self._sql.set_value_lock
            row = await (await hold.conn.execute(statement, args)).fetchone()
        return row is not None

    # Inspection, on the driver's own connection (it holds no locks).

    async def _contenders(self, key: str, waiters: bool) -> list[Holder]:
        conn = await self._inspector()
        args = {"k": self._lock_key(key), "waiters": waiters}
        with self._errors("contenders"):
            rows = await (await conn.execute(self._sql.contenders, args)).fetchall()
        return [_holder(key, row) for row in rows]

    async def _kept(self, key: str) -> list[Holder]:
        """The entries kept under min_hold (``ended``), in token order."""
        conn = await self._inspector()
        with self._errors("contenders"):
            rows = await (await conn.execute(self._sql.kept, {"k": self._lock_key(key)})).fetchall()
        return [
            Holder(
                name=key.partition("/")[2],
                owner=owner,
                host=host,
                pid=int(pid),
                token=int(token),
                acquired_at=acquired_at,
                expires_in=max(0.0, float(expires_in)),
                value=value,
                mode=mode,
                ended=True,
            )
            for owner, host, pid, token, acquired_at, value, expires_in, mode in rows
        ]

    async def holder(self, key: str) -> Holder | None:
        found = await self._kept(key) + await self._contenders(key, waiters=False)
        return found[0] if found else None

    async def contenders(self, key: str) -> list[Holder]:
        return await self._kept(key) + await self._contenders(key, waiters=True)

    async def changes(self, key: str) -> AsyncIterator[None]:
        conn = await self._open(None)  # LISTEN needs a connection of its own
        try:
            with self._errors("listen"):
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel(key))))
            yield
            while True:
                notified = False
                with self._errors("observe"):
                    async for _ in conn.notifies(timeout=5.0, stop_after=1):
                        notified = True
                if notified:
                    yield
        finally:
            await _close_quietly(conn)

    def forget_after_fork(self) -> None:
        # The parent's connections: never used (or closed) by the child.
        self._inspect = self._first = None

    # Listing (``tenure ls``): one statement, the namespace's holder records joined with
    # pg_locks (so only live holders count), then the waiters of those keys.

    async def in_use(self) -> dict[str, list[Holder]]:
        conn = await self._inspector()
        statement = sql.SQL(_IN_USE).format(s=sql.Identifier(self._schema))
        with self._errors("list"):
            async with conn.transaction():
                # pg_locks comes from a function the planner guesses at 1 row: a nested loop
                # over it is quadratic in the number of locks one connection holds.
                await conn.execute("SET LOCAL enable_nestloop = off")
                rows = await (await conn.execute(statement, {"ns": self._namespace})).fetchall()
        listing: dict[str, list[Holder]] = {}
        for key, *row, since in rows:
            listing.setdefault(key, []).append(_holder(key, row, since))
        return listing

    def namespace_changes(self) -> AsyncIterator[None]:
        # Only elections and semaphores notify (a lock's release stays one statement, no
        # NOTIFY): look again at a bounded interval.
        return refreshes()


class _Statements:
    """The SQL, composed once per schema (prepared by psycopg on first use).

    Result rows of the acquiring statements: ``got, lock, token, acquired_at, waited, stored,
    notified, kept`` (``lock``: the advisory lock held; ``stored``: a live contender's other
    limit; ``kept``: seconds until a ``min_hold`` entry that blocks us ends, or None: for a
    lock granted despite one, the latest; for a permit not granted, the earliest).
    """

    def __init__(self, schema: str) -> None:
        s = sql.Identifier(schema)

        def q(text: str) -> str:
            # Rendered once: psycopg then sends (and prepares) the same bytes every time.
            return sql.SQL(text).format(s=s).as_string(None)

        self.probe = (
            "SELECT current_setting('idle_session_timeout'),"
            " current_setting('tenure.session', true)"
        )
        self.exists = "SELECT " + " AND ".join(
            sql.SQL("to_regclass({}) IS NOT NULL")
            .format(sql.Literal(f'"{schema}".{name}'))
            .as_string(None)
            for name in ("holders", "waiters", "waiters_key", "counters", "holds")
        )
        self.shape = (
            "SELECT count(*) FILTER (WHERE table_name = 'holders' AND column_name = 'lim'),"
            " count(*) FILTER (WHERE table_name = 'counters' AND column_name = 'kept_s')"
            " FROM information_schema.columns WHERE table_schema = %s"
        )
        self.create = [
            q("CREATE SCHEMA IF NOT EXISTS {s}"),
            q(
                "CREATE UNLOGGED TABLE IF NOT EXISTS {s}.holders ("
                " key bigint NOT NULL, backend_pid int NOT NULL, lock bigint NOT NULL,"
                " mode text NOT NULL, lim int NOT NULL, namespace text NOT NULL,"
                " name text NOT NULL, owner text NOT NULL, host text NOT NULL, pid int NOT NULL,"
                " token bigint NOT NULL, acquired_at timestamptz NOT NULL, ttl float8 NOT NULL,"
                " value jsonb, PRIMARY KEY (key, backend_pid)) WITH (fillfactor = 50)"
            ),
            q(
                "CREATE UNLOGGED TABLE IF NOT EXISTS {s}.waiters ("
                " backend_pid int PRIMARY KEY, key bigint NOT NULL, mode text NOT NULL,"
                " lim int NOT NULL, owner text NOT NULL, host text NOT NULL, pid int NOT NULL,"
                " value jsonb)"
            ),
            q("CREATE INDEX IF NOT EXISTS waiters_key ON {s}.waiters (key)"),
            # One row per key: its last token (see holder() below), the record of its exclusive
            # holder (backend_pid .. name: written in the grant's token update, never deleted,
            # believed only while pg_locks shows that backend holding the key exclusively), and
            # the ends of its live min_hold entries, exclusive and shared (kept_x, kept_s:
            # grants read them here, not in holds). UNLOGGED: the clock carries the tokens
            # across a crash or a promotion, which start it empty (``restore_holds`` then puts
            # the holds' ends back).
            q(
                "CREATE UNLOGGED TABLE IF NOT EXISTS {s}.counters ("
                " key bigint PRIMARY KEY, token bigint NOT NULL, "
                + ", ".join(_COUNTERS_ADDED)
                + ") WITH (fillfactor = 50)"
            ),
            # A counters table made by an earlier tenure (key, token) gains the new columns.
            q(
                "ALTER TABLE {s}.counters "
                + ", ".join(f"ADD COLUMN IF NOT EXISTS {column}" for column in _COUNTERS_ADDED)
            ),
            # min_hold: the entries released early, kept until ``until`` (server clock); logged,
            # so a crash does not end a hold early. Acquirers honour them (``kept_until``).
            q(
                "CREATE TABLE IF NOT EXISTS {s}.holds ("
                " key bigint NOT NULL, owner text NOT NULL, lock bigint NOT NULL,"
                " mode text NOT NULL, lim int NOT NULL, namespace text NOT NULL,"
                " name text NOT NULL, host text NOT NULL, pid int NOT NULL,"
                " token bigint NOT NULL, acquired_at timestamptz NOT NULL, value jsonb,"
                " until timestamptz NOT NULL, PRIMARY KEY (key, owner))"
            ),
            # Seconds until the latest (``first``: the earliest) live hold of key ``k`` that
            # blocks a contender ends (NULL: none): for a shared one only exclusive holds, for a
            # slot only that slot's. VOLATILE: it reads with a fresh snapshot, so a statement
            # that waited in the lock queue sees the hold its predecessor recorded (committed
            # before it unlocked) meanwhile. PL/pgSQL: its plan is cached per session (an SQL
            # function is planned on every call: +150-220 us per grant, measured).
            q(
                "CREATE OR REPLACE FUNCTION {s}.kept_until(k bigint, shared boolean, slot bigint,"
                " first boolean) RETURNS float8 LANGUAGE plpgsql VOLATILE AS $$"
                " DECLARE left_s float8; BEGIN"
                " SELECT extract(epoch FROM CASE WHEN first THEN min(until) ELSE max(until) END"
                " - clock_timestamp())::float8 INTO left_s FROM {s}.holds WHERE key = k"
                " AND until > clock_timestamp() AND (slot IS NULL OR lock = slot)"
                " AND (NOT shared OR mode = 'exclusive'); RETURN left_s; END $$"
            ),
        ]

        def upsert(columns: str) -> str:
            return ", ".join(f"{c} = EXCLUDED.{c}" for c in columns.split(", "))

        record = (
            "lock, mode, lim, namespace, name, owner, host, pid, token, acquired_at, ttl, value"
        )
        queued = "key, mode, lim, owner, host, pid, value"

        def holder(lock: str, source: str) -> str:
            """CTEs ``n`` and ``u``: for each row of ``source`` (a grant of ``lock`` here), the
            key's next token (greatest of its last token + 1 and the server clock in µs; the
            row lock of the key's counter orders readers granted together), and the holder
            record with it."""
            return (
                "n AS (INSERT INTO {s}.counters AS c (key, token) SELECT %(k)s, "
                + _CLOCK_US
                + " FROM "
                + source
                + " ON CONFLICT (key) DO UPDATE SET token = greatest(c.token + 1, EXCLUDED.token)"
                " RETURNING c.token, c.kept_x AS kept),"
                " u AS (INSERT INTO {s}.holders AS h (key, backend_pid, " + record + ")"
                " SELECT %(k)s, pg_backend_pid(), " + lock + ", %(mode)s, %(limit)s, %(ns)s,"
                " %(name)s, %(owner)s, %(host)s, %(pid)s, n.token, clock_timestamp(), %(ttl)s,"
                " %(value)s::jsonb FROM n, "
                + source
                + " ON CONFLICT (key, backend_pid) DO UPDATE SET "
                + upsert(record)
                + " RETURNING h.token, h.acquired_at)"
            )

        def waiter(backend_pid: str, source: str) -> str:
            """Write the queue record of the connection ``backend_pid``."""
            return (
                "INSERT INTO {s}.waiters (backend_pid, "
                + queued
                + ") SELECT "
                + backend_pid
                + ", %(k)s, %(mode)s, %(limit)s, %(owner)s, %(host)s, %(pid)s, %(value)s::jsonb"
                + source
                + " ON CONFLICT (backend_pid) DO UPDATE SET "
                + upsert(queued)
            )

        # With the deadline as lock_timeout (local to this statement's transaction).
        timeout = "c AS MATERIALIZED (SELECT set_config('lock_timeout', %(ms)s, true) AS t)"
        waited = "extract(epoch FROM clock_timestamp() - statement_timestamp())"
        unqueue = "DELETE FROM {s}.waiters WHERE backend_pid = pg_backend_pid()"

        # An exclusive grant (a lock, a writer, an election) writes its record in the key's
        # counters row, in the update that takes the token: one row written per grant, and a
        # release that deletes nothing (the record is believed only while pg_locks shows its
        # backend holding the key exclusively). CTE ``u``: token, acquired_at, and the end of
        # the key's latest min_hold entry (``kept``).
        def exclusive(source: str) -> str:
            return (
                "u AS (INSERT INTO {s}.counters AS c (key, token, backend_pid, owner, host, pid,"
                " acquired_at, ttl, value, namespace, name) SELECT %(k)s, " + _CLOCK_US + ","
                " pg_backend_pid(), %(owner)s, %(host)s, %(pid)s, clock_timestamp(), %(ttl)s,"
                " %(value)s::jsonb, %(ns)s, %(name)s FROM " + source + " ON CONFLICT (key) DO"
                " UPDATE SET token = greatest(c.token + 1, EXCLUDED.token),"
                " backend_pid = EXCLUDED.backend_pid, owner = EXCLUDED.owner,"
                " host = EXCLUDED.host, pid = EXCLUDED.pid, acquired_at = EXCLUDED.acquired_at,"
                " ttl = EXCLUDED.ttl, value = EXCLUDED.value RETURNING c.token, c.acquired_at,"
                " greatest(c.kept_x, c.kept_s) AS kept)"
            )

        def left(until: str) -> str:
            """Seconds until ``until`` (a hold's end), NULL if past or NULL."""
            return (
                f"CASE WHEN {until} > clock_timestamp()"
                f" THEN extract(epoch FROM {until} - clock_timestamp())::float8 END"
            )

        # Locks, elections, writers. One round trip: try; on success take a token and write the
        # holder record, else the queue record of the spare connection we will wait on (wpid),
        # if there is one.
        self.try_lock = q(
            "WITH g AS MATERIALIZED (SELECT pg_try_advisory_lock(%(k)s) AS got),"
            " " + exclusive("g WHERE g.got") + ","
            " w AS (" + waiter("%(wpid)s", " FROM g WHERE NOT g.got AND %(wpid)s <> 0") + ")"
            " SELECT g.got, %(k)s, u.token, u.acquired_at, 0, NULL::int,"
            " CASE WHEN g.got AND %(channel)s <> '' THEN pg_notify(%(channel)s, '') END, "
            + left("u.kept")
            + " FROM g LEFT JOIN u ON true"
        )
        # Readers: their records in holders; only exclusive holds (kept_x) block them.
        self.try_shared = q(
            "WITH g AS MATERIALIZED (SELECT pg_try_advisory_lock_shared(%(k)s) AS got),"
            " " + holder("%(k)s", "g WHERE g.got") + ","
            " w AS (" + waiter("%(wpid)s", " FROM g WHERE NOT g.got AND %(wpid)s <> 0") + ")"
            " SELECT g.got, %(k)s, u.token, u.acquired_at, 0, NULL::int, NULL, "
            + left("(SELECT kept FROM n)")
            + " FROM g LEFT JOIN u ON true"
        )
        # Wait in PostgreSQL's queue; on the grant take a token and write the holder record.
        self.wait_lock = q(
            "WITH " + timeout + ", g AS MATERIALIZED (SELECT pg_advisory_lock(%(k)s)"
            " IS NOT NULL AS got, " + waited + " AS waited FROM c),"
            " " + exclusive("g") + ""
            " SELECT true, %(k)s, u.token, u.acquired_at, g.waited, NULL::int, "
            + _NOTIFY
            + ", "
            + left("u.kept")
            + " FROM g, u"
        )
        self.wait_shared = q(
            "WITH " + timeout + ", g AS MATERIALIZED (SELECT pg_advisory_lock_shared(%(k)s)"
            " IS NOT NULL AS got, " + waited + " AS waited FROM c),"
            " " + holder("%(k)s", "g") + ""
            " SELECT true, %(k)s, u.token, u.acquired_at, g.waited, NULL::int, NULL, "
            + left("n.kept")
            + " FROM g, n, u"
        )

        def permit(turnstile: str, arriving: bool) -> str:
            """Semaphores: holding the turnstile ``t`` (got, waited), compare the limit with the
            live records (an arriving contender: waiters' too), take the first free slot and
            write the holder record, then leave the turnstile (an arriving contender always)."""
            holders = "FROM {s}.holders WHERE key = %(k)s AND lim <> %(limit)s"
            waiters = "FROM {s}.waiters WHERE key = %(k)s AND lim <> %(limit)s"
            seen = f"EXISTS (SELECT 1 {holders})"
            live = f"SELECT lim, backend_pid, lock {holders}"
            if arriving:
                seen += f" OR EXISTS (SELECT 1 {waiters})"
                live += f" UNION ALL SELECT lim, backend_pid, key {waiters}"
            ctes = [
                turnstile,
                # The other limit of a live contender; pg_locks is read only if a record has one.
                f"m AS MATERIALIZED (SELECT CASE WHEN {seen} THEN (SELECT x.lim FROM ({live}) x"
                " (lim, backend_pid, lock) JOIN pg_locks l ON l.pid = x.backend_pid AND "
                + _lock_of("x.lock")
                + " LIMIT 1) END AS stored)",
                # Holding the turnstile, with no other limit: the first free slot, if any.
                "s AS MATERIALIZED (SELECT x.slot FROM (SELECT hashtextextended(%(slots)s, i)"
                " AS slot FROM generate_series(1, CASE WHEN (SELECT got FROM t)"
                " AND (SELECT stored FROM m) IS NULL THEN %(limit)s ELSE 0 END) AS i) AS x"
                " WHERE CASE WHEN {s}.kept_until(%(k)s, false, x.slot, false) IS NULL"
                " THEN pg_try_advisory_lock(x.slot) END LIMIT 1)",
                "g AS MATERIALIZED (SELECT (SELECT slot FROM s) AS slot)",
                holder("g.slot", "g WHERE g.slot IS NOT NULL"),
                "d AS (" + unqueue + " AND (SELECT slot FROM g) IS NOT NULL)",
                "r AS MATERIALIZED (SELECT pg_advisory_unlock(%(k)s) FROM t, g WHERE t.got AND "
                + ("true)" if arriving else "g.slot IS NOT NULL)"),
            ]
            if arriving:  # not granted: the queue record of the spare we will wait on (wpid)
                where = " FROM g, m WHERE g.slot IS NULL AND m.stored IS NULL AND %(wpid)s <> 0"
                ctes.append("w AS (" + waiter("%(wpid)s", where) + ")")
            return (
                "WITH " + ", ".join(ctes) + " SELECT g.slot IS NOT NULL, g.slot, u.token,"
                " u.acquired_at, t.waited, m.stored, (SELECT count(*) FROM r),"
                " CASE WHEN g.slot IS NULL THEN {s}.kept_until(%(k)s, false, NULL, true) END"
                " FROM t, m, g LEFT JOIN u ON true"
            )

        tried = "t AS MATERIALIZED (SELECT pg_try_advisory_lock(%(k)s) AS got, 0 AS waited)"
        queued_for = "pg_advisory_lock(%(k)s) IS NOT NULL AS got, " + waited + " AS waited"
        self.try_permit = q(permit(tried, arriving=True))
        self.wait_permit = q(
            permit(f"{timeout}, t AS MATERIALIZED (SELECT {queued_for} FROM c)", arriving=False)
        )
        self.head_permit = q(permit("t AS (SELECT true AS got, 0 AS waited)", arriving=False))
        self.enqueue = q(waiter("pg_backend_pid()", ""))
        # The try failed: unlock whatever of k (or of its slots) it took here (and notify: it
        # may have been a permit).
        self.undo_try = q(
            "WITH h AS (DELETE FROM {s}.holders WHERE key = %(k)s"
            " AND backend_pid = pg_backend_pid()) SELECT CASE WHEN l.mode = 'ShareLock'"
            " THEN pg_advisory_unlock_shared(x.lock) ELSE pg_advisory_unlock(x.lock) END"
            " FROM (SELECT %(k)s::bigint UNION ALL"
            " SELECT hashtextextended(%(slots)s, i) FROM generate_series(1, %(limit)s) AS i)"
            " AS x (lock) JOIN pg_locks l ON l.pid = pg_backend_pid() AND l.granted AND "
            + _lock_of("x.lock")
            + " UNION ALL SELECT "
            + _NOTIFY
            + " IS NULL"
        )
        # A waiting connection holds nothing else: unlock all (a grant we did not read: notify,
        # it may have been a permit) and delete its records.
        self.undo_wait = q(
            "WITH d AS (" + unqueue + "), h AS (DELETE FROM {s}.holders WHERE"
            " backend_pid = pg_backend_pid()) SELECT pg_advisory_unlock_all(), " + _NOTIFY
        )
        # pg_advisory_unlock is False (with a WARNING notice) when this session did not hold it.
        # An exclusive grant's record (in counters) stays: it is dead once the lock is unlocked.
        self.release_lock = "SELECT pg_advisory_unlock(%(lock)s), " + _NOTIFY
        self.release = q(
            "WITH d AS (DELETE FROM {s}.holders WHERE key = %(k)s"
            " AND backend_pid = pg_backend_pid()) SELECT CASE WHEN %(shared)s"
            " THEN pg_advisory_unlock_shared(%(lock)s) ELSE pg_advisory_unlock(%(lock)s) END, "
            + _NOTIFY
        )

        # min_hold: record our entry as kept until now + hold (then ``release`` unlocks): its
        # own statement, committed before the unlock, so that whoever is granted next sees it.
        # The key's counters row keeps the latest end (exclusive: kept_x, else kept_s), which is
        # where grants look.
        def keep(entry: str) -> str:
            return q(
                "WITH x AS (DELETE FROM {s}.holds WHERE key = %(k)s AND until < clock_timestamp()),"
                " i AS (INSERT INTO {s}.holds (key, owner, lock, mode, lim, namespace, name,"
                " host, pid, token, acquired_at, value, until) " + entry + " AND " + _HELD + ""
                " ON CONFLICT (key, owner) DO UPDATE SET until = EXCLUDED.until"
                " RETURNING key, mode, until) UPDATE {s}.counters c SET kept_x = CASE WHEN"
                " i.mode = 'exclusive' THEN greatest(c.kept_x, i.until) ELSE c.kept_x END,"
                " kept_s = CASE WHEN i.mode = 'exclusive' THEN c.kept_s"
                " ELSE greatest(c.kept_s, i.until) END FROM i WHERE c.key = i.key"
            )

        until = "clock_timestamp() + make_interval(secs => %(hold)s)"
        self.keep = keep(
            "SELECT key, owner, lock, mode, lim, namespace, name, host, pid, token, acquired_at,"
            " value, " + until + " FROM {s}.holders"
            " WHERE key = %(k)s AND backend_pid = pg_backend_pid() AND lock = %(lock)s"
        )
        self.keep_lock = keep(
            "SELECT key, owner, key, 'exclusive', 0, namespace, name, host, pid, token,"
            " acquired_at, value, " + until + " FROM {s}.counters"
            " WHERE key = %(k)s AND backend_pid = pg_backend_pid()"
        )
        # After a crash or a promotion (counters empty, holds not): the live holds' ends.
        self.restore_holds = q(
            "INSERT INTO {s}.counters AS c (key, token, kept_x, kept_s) SELECT key, 0,"
            " max(until) FILTER (WHERE mode = 'exclusive'),"
            " max(until) FILTER (WHERE mode <> 'exclusive') FROM {s}.holds"
            " WHERE until > clock_timestamp() GROUP BY key ON CONFLICT (key) DO UPDATE"
            " SET kept_x = greatest(c.kept_x, EXCLUDED.kept_x),"
            " kept_s = greatest(c.kept_s, EXCLUDED.kept_s)"
            " WHERE c.kept_x IS DISTINCT FROM greatest(c.kept_x, EXCLUDED.kept_x)"
            " OR c.kept_s IS DISTINCT FROM greatest(c.kept_s, EXCLUDED.kept_s)"
        )
        self.kept = q(
            "SELECT owner, host, pid, token, acquired_at, value,"
            " extract(epoch FROM until - clock_timestamp())::float8, mode FROM {s}.holds"
            " WHERE key = %(k)s AND until > clock_timestamp() ORDER BY token"
        )
        self.check = "SELECT " + _HELD
        self.set_value = q(
            "WITH u AS (UPDATE {s}.holders SET value = %(value)s::jsonb"
            " WHERE key = %(k)s AND owner = %(owner)s AND backend_pid = pg_backend_pid()"
            " AND " + _HELD + " RETURNING 1)"
            " SELECT 1, " + _NOTIFY + " FROM u"
        )
        self.set_value_lock = q(
            "WITH u AS (UPDATE {s}.counters SET value = %(value)s::jsonb"
            " WHERE key = %(k)s AND owner = %(owner)s AND backend_pid = pg_backend_pid()"
            " AND " + _HELD + " RETURNING 1)"
            " SELECT 1, " + _NOTIFY + " FROM u"
        )
        # Holders in grant order, then (if asked) waiters: a semaphore's head (it holds the
        # turnstile), then the queue in PostgreSQL's order.
        self.contenders = q(
            "SELECT owner, host, pid, token, acquired_at, value, expires_in, mode, waiting FROM ("
            "SELECT h.owner, h.host, h.pid, h.token, h.acquired_at, h.value,"
            " CASE WHEN a.state = 'idle' THEN greatest(0, h.ttl"
            " - extract(epoch FROM clock_timestamp() - a.state_change)) END AS expires_in,"
            " h.mode, false AS waiting, 0 AS rank, h.token AS n, NULL::timestamptz AS since"
            " FROM "
            + _live_holders("key = %(k)s")
            + " LEFT JOIN pg_stat_activity a ON a.pid = l.pid UNION ALL"
            " SELECT w.owner, w.host, w.pid, 0, NULL, w.value, NULL, w.mode, true,"
            " CASE WHEN l.granted THEN 1 ELSE 2 END, 0, l.waitstart"
            " FROM {s}.waiters w JOIN pg_locks l ON l.pid = w.backend_pid"
            " AND " + _lock_of("w.key") + " AND " + _QUEUED + " WHERE w.key = %(k)s"
            " AND %(waiters)s"
            ") AS c ORDER BY rank, n, since NULLS LAST"
        )


def _holder(key: str, row: Sequence[Any], since: object = None) -> Holder:
    """A contender of ``key`` from a row of ``contenders`` (or of the listing, which adds the
    key before and the time its wait began after)."""
    owner, host, pid, token, acquired_at, value, expires_in, mode, waiting = row
    return Holder(
        name=key.partition("/")[2],
        owner=owner,
        host=host,
        pid=int(pid),
        token=int(token),
        acquired_at=acquired_at if isinstance(acquired_at, dt.datetime) else None,
        expires_in=None if expires_in is None else float(expires_in),
        value=value,  # psycopg loads jsonb
        mode=mode,
        waiting=waiting,
        waiting_since=since if isinstance(since, dt.datetime) else None,
    )


def _lock_of(key: str) -> str:
    """SQL: the ``pg_locks`` row ``l`` is of the advisory lock on the bigint ``key`` (an SQL
    expression), in this database (``granted`` says whether held or waited for)."""
    return (
        "l.locktype = 'advisory' AND l.objsubid = 1"
        f" AND l.classid = (({key}::bigint >> 32) & 4294967295)::oid"
        f" AND l.objid = ({key}::bigint & 4294967295)::oid"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )


def _live_holders(where: str) -> str:
    """SQL: the live holders' records that satisfy ``where`` (a condition on a record's
    columns), as ``h`` joined with their ``pg_locks`` row ``l``: readers' and permits' from
    ``holders``; exclusive ones from their key's ``counters`` row, believed only while that
    backend holds the key exclusively (the record is never deleted)."""
    columns = "key, backend_pid, {}, owner, host, pid, token, acquired_at, value, ttl, {}, name"
    return (
        "(SELECT " + columns.format("lock", "mode") + " FROM {s}.holders WHERE " + where
        + " UNION ALL SELECT " + columns.format("key", "'exclusive'")
        + " FROM {s}.counters WHERE " + where
        + ") h JOIN pg_locks l ON l.pid = h.backend_pid AND l.granted AND " + _lock_of("h.lock")
        + " AND (h.mode <> 'exclusive' OR l.mode = 'ExclusiveLock')"
    )  # fmt: skip


#: the server clock in µs (the floor of a token)
_CLOCK_US = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
#: The columns of ``counters`` after (key, token): the exclusive holder's record, the hold ends.
_COUNTERS_ADDED = (
    "backend_pid int",
    "owner text",
    "host text",
    "pid int",
    "acquired_at timestamptz",
    "ttl float8",
    "value jsonb",
    "namespace text",
    "name text",
    "kept_x timestamptz",
    "kept_s timestamptz",
)
#: Connection failures that are the caller's configuration, not the server's availability.
_CONFIG_ERRORS = (
    "password authentication failed",
    "no password supplied",
    "does not exist",
    "pg_hba.conf",
    "SSL",
    "certificate",
)
#: a queue record ``w`` joined with its ``pg_locks`` row ``l`` is of a live waiter: a lock's
#: (or a reader's) record stays after its grant (not deleted in the grant's statement: the
#: next wait of that connection overwrites it), a semaphore's is deleted then (granted: the
#: head, holding the turnstile)
_QUEUED = "(NOT l.granted OR w.lim > 0)"
#: ``in_use``: the live holders of a namespace (``key`` is ``<kind>/<name>``) in grant order,
#: then the waiters of their keys in PostgreSQL's queue order. (A waiter whose key has no live
#: tenure holder record, a passing state, is not listed.)
_IN_USE = (
    "WITH h AS MATERIALIZED (SELECT h.key AS k, h.name, h.owner, h.host, h.pid, h.token,"
    " h.acquired_at, h.value, CASE WHEN a.state = 'idle' THEN greatest(0, h.ttl"
    " - extract(epoch FROM clock_timestamp() - a.state_change)) END AS expires_in, h.mode"
    " FROM "
    + _live_holders("namespace = %(ns)s")
    + " LEFT JOIN pg_stat_activity a ON a.pid = l.pid)"
    " SELECT name, owner, host, pid, token, acquired_at, value, expires_in, mode, waiting,"
    " since FROM (SELECT name, owner, host, pid, token, acquired_at, value, expires_in, mode,"
    " false AS waiting, NULL::timestamptz AS since, 0 AS rank, token AS n FROM h UNION ALL"
    " SELECT k.name, w.owner, w.host, w.pid, 0, NULL, w.value, NULL, w.mode, true,"
    " l.waitstart, CASE WHEN l.granted THEN 1 ELSE 2 END, 0"
    " FROM {s}.waiters w JOIN (SELECT DISTINCT k, name FROM h) k ON k.k = w.key"
    " JOIN pg_locks l ON l.pid = w.backend_pid AND "
    + _lock_of("w.key")
    + " AND "
    + _QUEUED
    + ") AS c"
    " ORDER BY name, rank, n, since NULLS LAST"
)
#: notify observers (lazily: CASE evaluates only the branch it takes)
_NOTIFY = "CASE WHEN %(channel)s <> '' THEN pg_notify(%(channel)s, '') END"
#: "this connection holds advisory lock ``lock``" (as an SQL boolean)
_HELD = (
    "EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = pg_backend_pid() AND l.granted AND "
    + _lock_of("%(lock)s")
    + ")"
)


async def _sleep_unless_ended(lease: Lease, seconds: float) -> None:
    """Sleep ``seconds``, or less if the session ends meanwhile."""
    ended = _compat.Event()
    call_soon = _compat.thread_safe_caller()
    forget = lease.wake_on_end(lambda: call_soon(ended.set))
    try:
        await ended.wait(seconds)
    finally:
        forget()


async def _ping(conn: _Conn) -> bool:
    """One keep-alive round trip; False when the connection (and its locks) is gone."""
    if conn.closed:
        return False
    try:
        await conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _client_keepalive(conn: _Conn, idle: int, user_timeout_ms: int) -> None:
    """Set the client side's TCP keepalive and user timeout on ``conn``'s socket, as libpq's
    ``keepalives_idle``/``keepalives_interval``/``tcp_user_timeout`` would have at connection
    start (nothing to do on a Unix socket)."""
    try:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except OSError:
        return
    with sock:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        with contextlib.suppress(OSError, AttributeError):  # (the options are Linux's)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)


async def _close_quietly(conn: _Conn) -> None:
    try:
        await conn.close()
    except psycopg.Error as exc:
        log.debug("tenure: closing a postgresql connection: %s", exc)


def _by(sent: float, waited: float, lease: Lease) -> float:
    """The local time by which a connection granted now must be renewed: the server's idle
    timer started no earlier than ``sent`` (+ the server-side wait)."""
    return sent + waited + lease.ttl * (1 - DRIFT)


def _ms(text: str) -> int:
    """PostgreSQL's display of a time setting ('1s', '1500ms', '0') in milliseconds."""
    units = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    return int(text) if text.isdigit() else -1


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
