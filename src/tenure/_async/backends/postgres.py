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

**Connections.** A tenure session (one lease) has a *primary* connection, on which every acquire
first tries ``pg_try_advisory_lock`` (one statement: the try, the fencing token and the holder
record; one round trip). Uncontended locks are held there, so renewing them is one ``SELECT 1``
however many there are. A contender that must wait does so on a connection of its own, in
PostgreSQL's lock queue (``pg_advisory_lock``: FIFO, woken by the server, no polling), with the
deadline as ``lock_timeout``; it holds the lock there until released, then the connection is
kept as a spare for the next waiter. The keep-alive pings every connection that holds a lock
(concurrently in asyncio). A connection that breaks has lost its locks: they are reported lost.

**Tokens and records.** The fencing token is ``nextval`` of a sequence (durable: its WAL is
flushed with the granting statement's commit), bumped in the statement that grants. Holder and
waiter records (owner id, host, pid, value) live in two UNLOGGED tables and are trusted only
when joined with ``pg_locks`` on the backend pid that really holds (or waits for) the lock, so a
stale record never shows a holder. Release is ``pg_advisory_unlock(k)`` on the holding
connection: owner-checked by construction (only that server session can unlock it).

Schema objects (a schema, two tables, a sequence) are created on first use, idempotently, in the
schema named by the ``schema`` option (default ``tenure``). A transaction-pooling proxy
(pgbouncer) cannot carry session-level locks: the driver checks that the settings it sent at
connection start reached the server session, and refuses with a clear error if they did not.
"""

from __future__ import annotations

import asyncio  # tenure: async-only
import datetime as dt
import hashlib
import json
import logging
import math
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
from .base import DRIFT, EXCLUSIVE, Grant, Lease, Mode

__all__ = ["PostgresDriver"]

log = logging.getLogger("tenure")

_DEFAULT_SCHEMA = "tenure"
_SCHEMA_LOCK = 0x74656E757265  # "tenure": serialises concurrent first-use schema creation
_Conn = psycopg.AsyncConnection[Any]


class _Hold:
    """A grant's place: the connection holding it."""

    __slots__ = ("conn", "release_sent")

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.release_sent = False


class _Pool:
    """A session's connections: the primary one, those waiting or holding, spares."""

    def __init__(self) -> None:
        self.primary: _Conn | None = None
        self.spares: list[_Conn] = []
        self.busy: set[_Conn] = set()  # waiting in a lock queue, or holding a waited-for lock
        self.closed = False


class PostgresDriver:
    """Driver for ``postgresql://[user[:password]@]host[:port][/dbname][?options]``."""

    scheme: ClassVar[str] = "postgresql"
    capabilities: ClassVar[Capabilities] = Capabilities(
        leases=True,
        fifo=True,
        min_ttl=0.5,
        expiry_slack=0.1,
        wakeup="PostgreSQL's own lock queue (pg_advisory_lock)",
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

    async def _open(self, ttl: float | None) -> _Conn:
        """A new dedicated connection whose server session ends after ``ttl`` s of silence."""
        ms = 0 if ttl is None else max(1, int(ttl * 1000))
        marker = new_owner_id()[:16]
        check_ms = max(100, ms // 3) if ms else 0
        keepalive = max(1, int(ttl / 3)) if ttl else 10
        settings = {
            "idle_session_timeout": ms,
            "client_connection_check_interval": check_ms,
            "tcp_keepalives_idle": keepalive,
            "tcp_keepalives_interval": keepalive,
            "tcp_keepalives_count": 3,
            "tcp_user_timeout": ms,
            "synchronous_commit": "on",  # the token sequence must survive a server crash
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
        except BaseException:
            await _close_quietly(conn)
            raise
        return conn

    async def _create_schema(self, conn: _Conn) -> None:
        row = await (await conn.execute(self._sql.exists)).fetchone()
        if row is None or not row[0]:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in self._sql.create:
                    await conn.execute(statement)
        self._ready = True

    async def connect(self) -> None:
        await self._inspector()

    async def _inspector(self) -> _Conn:
        """The connection for holder()/contenders()/changes(): no locks, no idle timeout."""
        conn = self._inspect
        if conn is None or conn.closed:
            conn = await self._open(None)
            if self._inspect is not None and not self._inspect.closed:
                await _close_quietly(conn)  # another task opened one meanwhile
                return self._inspect
            self._inspect = conn
        return conn

    async def close(self) -> None:
        conn, self._inspect = self._inspect, None
        if conn is not None:
            await _close_quietly(conn)  # sessions close their own connections

    # Leases: a set of dedicated connections, each ended by the server when silent for a TTL.

    async def grant_lease(self, ttl: float) -> Lease:
        pool = _Pool()
        pool.primary = await self._open(ttl)
        return Lease(id=new_owner_id()[:16], ttl=ttl, data=pool)

    async def renew_lease(
        self, lease: Lease, grants: Sequence[Grant], timeout: float
    ) -> Sequence[Grant]:
        pool: _Pool = lease.data
        conns = {grant.data.conn for grant in grants}
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
        return [grant for grant in grants if grant.data.conn in dead]

    async def revoke_lease(self, lease: Lease) -> None:
        pool: _Pool = lease.data
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

    def _args(self, key: str, owner: OwnerInfo, ttl: float) -> dict[str, Any]:
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
        }

    def _notify_channel(self, key: str) -> str:
        """The channel grants and releases of ``key`` notify: only elections do (observe())."""
        return self._channel(key) if key.startswith("election/") else ""

    def _channel(self, key: str) -> str:
        """The NOTIFY channel of ``key`` (only elections notify, for observe())."""
        return "tenure_" + format(self._lock_key(key) & 0xFFFFFFFFFFFFFFFF, "016x")

    async def acquire(
        self, lease: Lease, key: str, owner: OwnerInfo, deadline: float | None, mode: Mode
    ) -> Grant | None:
        if mode != EXCLUSIVE:  # not yet: [rwlock]/[semaphore] bring the shared modes here
            raise ConfigurationError(f"{self.scheme}: {mode.name} mode is not supported yet")
        pool: _Pool = lease.data
        if pool.closed:
            raise BackendError("the session's connections are closed")
        args = self._args(key, owner, lease.ttl)
        if pool.primary is None or pool.primary.closed:
            pool.primary = await self._open(lease.ttl)
        primary = pool.primary
        try_once = deadline is not None and deadline <= _compat.monotonic()
        # If we will have to wait, it will be on a spare connection: queue its record now.
        args["wpid"] = pool.spares[-1].info.backend_pid if pool.spares and not try_once else 0
        sent = _compat.monotonic()
        try:
            with self._errors("acquire"):
                row = await (await primary.execute(self._sql.try_acquire, args)).fetchone()
        except BackendError:
            await self._after_failed_try(pool, primary, args)
            raise
        assert row is not None
        got, token, acquired_at, _ = row
        if got:
            return Grant(
                key, owner, int(token), lease, acquired_at, _Hold(primary), _by(sent, 0, lease)
            )
        if try_once:
            return None
        return await self._wait(pool, lease, key, owner, args, deadline)

    async def _after_failed_try(self, pool: _Pool, conn: _Conn, args: dict[str, Any]) -> None:
        """The try statement failed: it may have taken the lock (its reply lost); undo that."""
        try:
            with self._errors("undo acquire"):
                await conn.execute(self._sql.undo_try, args)
        except BackendError:
            # The connection is broken: the server frees its locks when the session ends, and
            # every grant on it is reported lost at the next renewal.
            if pool.primary is conn:
                pool.primary = None

    async def _wait(
        self,
        pool: _Pool,
        lease: Lease,
        key: str,
        owner: OwnerInfo,
        args: dict[str, Any],
        deadline: float | None,
    ) -> Grant | None:
        """Queue in PostgreSQL's lock queue on a connection of our own until granted."""
        queued = [c for c in pool.spares if args["wpid"] and c.info.backend_pid == args["wpid"]]
        if queued:
            conn = queued[0]  # the try statement wrote its queue record
            pool.spares.remove(conn)
        else:
            conn = pool.spares.pop() if pool.spares else await self._open(lease.ttl)
        pool.busy.add(conn)
        done = False
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
                try:
                    with self._errors("wait"):
                        row = await (await conn.execute(self._sql.wait, args)).fetchone()
                except BackendTimeoutError as exc:
                    if isinstance(exc.__cause__, pg_errors.LockNotAvailable):
                        return None  # our lock_timeout: the deadline passed
                    raise
                assert row is not None
                token, acquired_at, waited, _ = row
                renew_by = _by(sent, float(waited), lease)
                if _compat.monotonic() < renew_by - lease.ttl / 3:
                    done = True
                    return Grant(key, owner, int(token), lease, acquired_at, _Hold(conn), renew_by)
                # The grant sat in our socket so long (a paused process) that the server may end
                # the session for silence before we can renew it: give it back, queue again.
                log.warning("tenure: the grant of %r came too late to trust; queueing again", key)
                with self._errors("queue again"):
                    await conn.execute(self._sql.undo_wait, args)
                    await conn.execute(self._sql.enqueue, args)
        finally:
            if not done:
                await self._give_back(pool, conn, args)

    async def _give_back(self, pool: _Pool, conn: _Conn, args: dict[str, Any]) -> None:
        """A waiting connection is done without a grant: unlock anything, keep it as a spare."""
        pool.busy.discard(conn)
        try:
            with self._errors("leave"):
                # Also undoes a grant whose reply we never read (cancelled just as it came).
                await conn.execute(self._sql.undo_wait, args)
        except BackendError:
            await _close_quietly(conn)  # the server ends the session and frees its locks
            return
        except BaseException:
            await _close_quietly(conn)
            raise
        if pool.closed:
            await _close_quietly(conn)
        else:
            pool.spares.append(conn)

    async def release(self, grant: Grant) -> bool:
        pool: _Pool = grant.lease.data
        hold: _Hold = grant.data
        retried, hold.release_sent = hold.release_sent, True
        if hold.conn.closed:
            # Its server session ended (or is ending), which frees its locks: released if that
            # happened under our first attempt, lost before it otherwise.
            return retried
        args = {"k": self._lock_key(grant.key), "channel": self._notify_channel(grant.key)}
        with self._errors("release"):
            row = await (await hold.conn.execute(self._sql.release, args)).fetchone()
        if hold.conn is not pool.primary and hold.conn in pool.busy:
            pool.busy.discard(hold.conn)
            if pool.closed:
                await _close_quietly(hold.conn)
            else:
                pool.spares.append(hold.conn)
        return bool(row and row[0])

    async def check(self, grant: Grant) -> bool:
        conn = grant.data.conn
        if conn.closed:
            return False
        try:
            with self._errors("check"):
                row = await (
                    await conn.execute(self._sql.check, {"k": self._lock_key(grant.key)})
                ).fetchone()
        except BackendUnavailableError:
            if conn.closed:
                return False
            raise
        return bool(row and row[0])

    async def set_value(self, grant: Grant, value: str) -> bool:
        conn = grant.data.conn
        if conn.closed:
            return False
        args = self._args(grant.key, grant.owner, grant.lease.ttl)
        args["value"] = json.dumps(value)
        with self._errors("set value"):
            row = await (await conn.execute(self._sql.set_value, args)).fetchone()
        return row is not None

    # Inspection, on the driver's own connection (it holds no locks).

    async def _rows(self, what: str, query: Any, args: dict[str, Any]) -> list[Any]:
        conn = await self._inspector()
        with self._errors(what):
            return await (await conn.execute(query, args)).fetchall()

    async def holder(self, key: str) -> Holder | None:
        rows = await self._rows("holder", self._sql.holder, {"k": self._lock_key(key)})
        return _holder(key, rows[0]) if rows else None

    async def contenders(self, key: str) -> list[Holder]:
        args = {"k": self._lock_key(key)}
        held = await self._rows("contenders", self._sql.holder, args)
        queued = await self._rows("contenders", self._sql.waiters, args)
        found = [_holder(key, row) for row in held]
        for owner, host, pid, value in queued:
            found.append(
                Holder(
                    name=key.partition("/")[2],
                    owner=owner,
                    host=host,
                    pid=int(pid),
                    token=0,
                    acquired_at=None,
                    expires_in=None,
                    value=value,  # psycopg loads jsonb
                )
            )
        return found

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
        self._inspect = None  # the parent's connection: never used (or closed) by the child


class _Statements:
    """The SQL, composed once per schema (prepared by psycopg on first use)."""

    def __init__(self, schema: str) -> None:
        s = sql.Identifier(schema)

        def q(text: str) -> str:
            # Rendered once: psycopg then sends (and prepares) the same bytes every time.
            return sql.SQL(text).format(s=s).as_string(None)

        self.probe = (
            "SELECT current_setting('idle_session_timeout'),"
            " current_setting('tenure.session', true)"
        )
        self.exists = (
            sql.SQL(
                "SELECT to_regclass({h}) IS NOT NULL AND to_regclass({w}) IS NOT NULL"
                " AND to_regclass({t}) IS NOT NULL"
            )
            .format(
                h=sql.Literal(f'"{schema}".holders'),
                w=sql.Literal(f'"{schema}".waiters'),
                t=sql.Literal(f'"{schema}".tokens'),
            )
            .as_string(None)
        )
        self.create = [
            q("CREATE SCHEMA IF NOT EXISTS {s}"),
            q(
                "CREATE UNLOGGED TABLE IF NOT EXISTS {s}.holders ("
                " key bigint PRIMARY KEY, namespace text NOT NULL, name text NOT NULL,"
                " owner text NOT NULL, host text NOT NULL, pid int NOT NULL,"
                " token bigint NOT NULL, acquired_at timestamptz NOT NULL, ttl float8 NOT NULL,"
                " value jsonb, backend_pid int NOT NULL) WITH (fillfactor = 50)"
            ),
            q(
                "CREATE UNLOGGED TABLE IF NOT EXISTS {s}.waiters ("
                " backend_pid int PRIMARY KEY, key bigint NOT NULL, owner text NOT NULL,"
                " host text NOT NULL, pid int NOT NULL, value jsonb)"
            ),
            q("CREATE SEQUENCE IF NOT EXISTS {s}.tokens"),
        ]
        upsert = (
            "INSERT INTO {s}.holders AS h (key, namespace, name, owner, host, pid, token,"
            " acquired_at, ttl, value, backend_pid)"
            " SELECT %(k)s, %(ns)s, %(name)s, %(owner)s, %(host)s, %(pid)s,"
            " nextval('{s}.tokens'), clock_timestamp(), %(ttl)s, %(value)s::jsonb,"
            " pg_backend_pid() FROM g WHERE g.got"
            " ON CONFLICT (key) DO UPDATE SET namespace = EXCLUDED.namespace,"
            " name = EXCLUDED.name, owner = EXCLUDED.owner, host = EXCLUDED.host,"
            " pid = EXCLUDED.pid, token = EXCLUDED.token, acquired_at = EXCLUDED.acquired_at,"
            " ttl = EXCLUDED.ttl, value = EXCLUDED.value, backend_pid = EXCLUDED.backend_pid"
            " RETURNING h.token, h.acquired_at"
        )
        # One round trip: try; on success take a token and write the holder record, else write
        # the queue record of the spare connection we will wait on (wpid), if there is one.
        self.try_acquire = q(
            "WITH g AS MATERIALIZED (SELECT pg_try_advisory_lock(%(k)s) AS got),"
            " u AS (" + upsert + "),"
            " w AS (INSERT INTO {s}.waiters (backend_pid, key, owner, host, pid, value)"
            " SELECT %(wpid)s, %(k)s, %(owner)s, %(host)s, %(pid)s, %(value)s::jsonb FROM g"
            " WHERE NOT g.got AND %(wpid)s <> 0 ON CONFLICT (backend_pid) DO UPDATE SET"
            " key = EXCLUDED.key, owner = EXCLUDED.owner, host = EXCLUDED.host,"
            " pid = EXCLUDED.pid, value = EXCLUDED.value)"
            " SELECT g.got, u.token, u.acquired_at,"
            " CASE WHEN g.got AND %(channel)s <> '' THEN pg_notify(%(channel)s, '') END"
            " FROM g LEFT JOIN u ON true"
        )
        self.undo_try = q(
            "SELECT pg_advisory_unlock(%(k)s) FROM pg_locks WHERE pid = pg_backend_pid()"
            " AND locktype = 'advisory' AND granted AND objsubid = 1"
            " AND classid = ((%(k)s::bigint >> 32) & 4294967295)::oid"
            " AND objid = (%(k)s::bigint & 4294967295)::oid"
        )
        self.enqueue = q(
            "INSERT INTO {s}.waiters (backend_pid, key, owner, host, pid, value)"
            " VALUES (pg_backend_pid(), %(k)s, %(owner)s, %(host)s, %(pid)s, %(value)s::jsonb)"
            " ON CONFLICT (backend_pid) DO UPDATE SET key = EXCLUDED.key,"
            " owner = EXCLUDED.owner, host = EXCLUDED.host, pid = EXCLUDED.pid,"
            " value = EXCLUDED.value"
        )
        # Wait in PostgreSQL's queue with the deadline as lock_timeout (local to this statement's
        # transaction); on the grant take a token and write the holder record, in one statement.
        self.wait = q(
            "WITH c AS MATERIALIZED (SELECT set_config('lock_timeout', %(ms)s, true) AS t),"
            " g AS MATERIALIZED (SELECT pg_advisory_lock(%(k)s) IS NOT NULL AS got,"
            " extract(epoch FROM clock_timestamp() - statement_timestamp()) AS waited FROM c),"
            " u AS (" + upsert + "),"
            " d AS (DELETE FROM {s}.waiters WHERE backend_pid = pg_backend_pid())"
            " SELECT u.token, u.acquired_at, g.waited, " + _NOTIFY + " FROM g, u"
        )
        # A waiting connection holds no other lock: unlock all (a grant we did not read) and
        # leave the queue record.
        self.undo_wait = q(
            "WITH d AS (DELETE FROM {s}.waiters WHERE backend_pid = pg_backend_pid())"
            " SELECT pg_advisory_unlock_all()"
        )
        # pg_advisory_unlock is False (with a WARNING notice) when this session did not hold it.
        self.release = "SELECT pg_advisory_unlock(%(k)s), " + _NOTIFY
        self.check = "SELECT " + _HELD
        self.set_value = q(
            "WITH u AS (UPDATE {s}.holders SET value = %(value)s::jsonb"
            " WHERE key = %(k)s AND owner = %(owner)s AND backend_pid = pg_backend_pid()"
            " AND " + _HELD + " RETURNING 1)"
            " SELECT 1, " + _NOTIFY + " FROM u"
        )
        lock_of = (
            "l.locktype = 'advisory' AND l.objsubid = 1"
            " AND l.classid = ((%(k)s::bigint >> 32) & 4294967295)::oid"
            " AND l.objid = (%(k)s::bigint & 4294967295)::oid"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        self.holder = q(
            "SELECT h.owner, h.host, h.pid, h.token, h.acquired_at, h.value,"
            " CASE WHEN a.state = 'idle' THEN greatest(0, h.ttl"
            " - extract(epoch FROM clock_timestamp() - a.state_change)) END"
            " FROM pg_locks l JOIN {s}.holders h ON h.key = %(k)s AND h.backend_pid = l.pid"
            " LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.granted AND " + lock_of
        )
        self.waiters = q(
            "SELECT w.owner, w.host, w.pid, w.value"
            " FROM pg_locks l JOIN {s}.waiters w ON w.key = %(k)s AND w.backend_pid = l.pid"
            " WHERE NOT l.granted AND " + lock_of + " ORDER BY l.waitstart NULLS LAST"
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
#: notify observers of an election (lazily: CASE evaluates only the branch it takes)
_NOTIFY = "CASE WHEN %(channel)s <> '' THEN pg_notify(%(channel)s, '') END"
#: "this connection holds advisory lock k" (as an SQL boolean)
_HELD = (
    "EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'"
    " AND granted AND objsubid = 1 AND classid = ((%(k)s::bigint >> 32) & 4294967295)::oid"
    " AND objid = (%(k)s::bigint & 4294967295)::oid)"
)


async def _ping(conn: _Conn) -> bool:
    """One keep-alive round trip; False when the connection (and its locks) is gone."""
    if conn.closed:
        return False
    try:
        await conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


async def _close_quietly(conn: _Conn) -> None:
    try:
        await conn.close()
    except psycopg.Error as exc:
        log.debug("tenure: closing a postgresql connection: %s", exc)


def _by(sent: float, waited: float, lease: Lease) -> float:
    """The local time by which a connection granted now must be renewed: the server's idle
    timer started no earlier than ``sent`` (+ the server-side wait)."""
    return sent + waited + lease.ttl * (1 - DRIFT)


def _holder(key: str, row: tuple[Any, ...]) -> Holder:
    owner, host, pid, token, acquired_at, value, expires_in = row
    return Holder(
        name=key.partition("/")[2],
        owner=owner,
        host=host,
        pid=int(pid),
        token=int(token),
        acquired_at=acquired_at if isinstance(acquired_at, dt.datetime) else None,
        expires_in=None if expires_in is None else float(expires_in),
        value=value,
    )


def _ms(text: str) -> int:
    """PostgreSQL's display of a time setting ('1s', '1500ms', '0') in milliseconds."""
    units = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    return int(text) if text.isdigit() else -1


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
