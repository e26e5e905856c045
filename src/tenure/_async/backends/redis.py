"""The ``redis://`` / ``rediss://`` backend: Lua-atomic, fenced, FIFO, woken without polling.

Every operation is one script and one round trip (``_redis_lua`` has the scripts and the key
layout). Scripts are called by SHA and reloaded transparently after a restart or SCRIPT FLUSH.

- **Acquire**: one script grants if the lock is free and nobody live is queued before us, bumping
  the fencing counter in the same script; otherwise it queues us (FIFO) with a record that
  carries our TTL and metadata. A waiter then blocks in BLPOP on its own signal list. A release
  **grants directly** to the next live waiter (it becomes the holder, with its own TTL and a new
  token) and pushes that grant onto the waiter's list, so the woken waiter returns without
  another round trip. The BLPOP also ends when the holder's TTL runs out (the script tells us
  its PTTL), so a dead holder is replaced after its TTL, and at least every TTL/3 to refresh our
  record: a waiter that dies is skipped after its TTL. A waiter that gives up (deadline,
  cancellation, error) runs the leave script, which also gives back a grant pushed to it
  meanwhile and passes the lock on.
- **Release** (``release`` below): deletes the holder only if it is still ours, then grants to
  the next live waiter. A retried release whose first reply was lost reports success, never
  deletes a newer holder's entry.
- **Renew**: one script over all the session's holder keys, ``PEXPIRE`` where still ours; it
  returns the keys that are not (deleted or taken), which the session reports as lost.

Redis replication is asynchronous: after a failover (Sentinel, Cluster) a replica may not have
the lock, and a second client can acquire it. The fencing token protects the resource in that
case only if the counter survived; see docs/semantics.md.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar, cast

import redis.asyncio as redis_client  # tenure: async-only
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster  # tenure: async-only
from redis.asyncio.retry import Retry  # tenure: async-only
from redis.backoff import NoBackoff
from redis.crc import key_slot

# tenure: sync import redis as redis_client
# tenure: sync from redis.cluster import RedisCluster
# tenure: sync from redis.retry import Retry
from ... import _redis_lua as lua
from ..._names import OwnerInfo, new_owner_id
from ..._types import Capabilities, Holder
from ..._url import ParsedURL, seconds_option
from ...errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
)
from .. import _compat
from .base import EXCLUSIVE, Grant, Lease, Mode

__all__ = ["ErrorBoundary", "OwnConnection", "RedisDriver", "from_us", "holder_from_record", "ms"]

_FLOAT_OPTIONS = ("socket_timeout", "connect_timeout")


class RedisDriver:
    """Driver for ``redis://[user:password@]host:port/db`` and ``rediss://`` (TLS)."""

    scheme: ClassVar[str] = "redis"
    capabilities: ClassVar[Capabilities] = Capabilities(
        leases=True,
        fifo=True,
        min_ttl=0.1,
        expiry_slack=0.0,
        wakeup="per-waiter signal list (BLPOP) pushed by the release script",
    )
    options: ClassVar[frozenset[str]] = frozenset(
        {
            "socket_timeout",
            "connect_timeout",
            "ssl_ca_certs",
            "ssl_certfile",
            "ssl_keyfile",
            "ssl_cert_reqs",
            "max_connections",
            "cluster",
        }
    )

    def __init__(self, url: ParsedURL, *, namespace: str, options: dict[str, str]) -> None:
        hosts = url.hosts_with_default(6379)
        if len(hosts) != 1:
            raise ConfigurationError(
                f"{url.scheme}:// takes one host, got {len(hosts)}; "
                "use redlock://h1:p1,h2:p2,h3:p3 for several independent masters"
            )
        self._host, self._port = hosts[0]
        db_text = url.path.strip("/") or "0"
        if not db_text.isdigit():
            raise ConfigurationError(f"redis database must be a number, got {db_text!r}")
        self._address = f"{self._host}:{self._port}"
        self._url = url
        self._namespace = namespace
        timeouts = {name: seconds_option(options, name, 5.0) for name in _FLOAT_OPTIONS}
        self._socket_timeout = timeouts["socket_timeout"]
        # Longest single BLPOP: it must end before the socket timeout does.
        self._max_block = max(0.05, self._socket_timeout - 0.5)
        ssl: dict[str, Any] = {}
        if url.scheme == "rediss":
            ssl["ssl"] = True
            for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
                if name in options:
                    ssl[name] = options[name]
        elif any(name.startswith("ssl_") for name in options):
            raise ConfigurationError("ssl_* options need a rediss:// URL")
        max_connections = options.get("max_connections")
        self._cluster = _flag(options, "cluster")
        common: dict[str, Any] = dict(
            host=self._host,
            port=self._port,
            username=url.username,
            password=url.password,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=timeouts["connect_timeout"],
            decode_responses=True,
            **ssl,
        )
        # Either client: the commands we use are the same; the cluster client routes each one
        # (and each script call) to the node of its keys' slot.
        self._client: Any
        if self._cluster:
            if db_text != "0":
                raise ConfigurationError("Redis Cluster has only database 0")
            if max_connections is not None:
                common["max_connections"] = int(max_connections)
            self._client = RedisCluster(**common)
        else:
            self._client = redis_client.Redis(
                db=int(db_text),
                retry=Retry(NoBackoff(), 0),  # we retry ourselves, knowing what is idempotent
                max_connections=None if max_connections is None else int(max_connections),
                **common,
            )
        self._own = None if self._cluster else OwnConnection(self._client.connection_pool)
        self._acquire = self._client.register_script(lua.ACQUIRE)
        self._release = self._client.register_script(lua.RELEASE)
        self._leave = self._client.register_script(lua.LEAVE)
        self._renew = self._client.register_script(lua.RENEW)
        self._set_value = self._client.register_script(lua.SET_VALUE)
        self._check = self._client.register_script(lua.CHECK)

    def __repr__(self) -> str:
        return f"RedisDriver({self._url.redacted()!r})"

    def _errors(self, what: str) -> ErrorBoundary:
        """Translate redis-py's exceptions at this one boundary (``with self._errors(...):``)."""
        return ErrorBoundary(self._address, self._url.username, what)

    def _prefix(self, key: str) -> str:
        return f"{self._namespace}:{{{key}}}:"

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """``script(keys, args)`` on our own connection (the hot path: acquire and release)."""
        if self._own is None:
            return await script(keys=keys, args=args)
        conn = await self._own.take()
        broken = True
        try:
            await conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            reply = await conn.read_response()
            broken = False
        except redis_errors.ResponseError as exc:
            broken = False
            if not isinstance(exc, redis_errors.NoScriptError):
                raise
            reply = None
        finally:
            await self._own.give_back(conn, broken=broken)
        if reply is None:  # the server lost its scripts: the script object loads it again
            return await script(keys=keys, args=args)
        return reply

    @staticmethod
    def _flags(key: str) -> str:
        # Only elections publish changes (for observe()); locks pay nothing for it.
        return "e" if key.startswith("election/") else ""

    async def connect(self) -> None:
        try:
            with self._errors("connect"):
                await self._client.ping()
        except BackendError as exc:
            if "DB index" in str(exc.__cause__):
                raise ConfigurationError(
                    f"redis at {self._address} has no database {self._url.path.strip('/')}"
                ) from exc.__cause__
            raise

    async def close(self) -> None:
        with self._errors("close"):
            if self._own is not None:
                await self._own.close()
            await self._client.aclose()

    # Leases: a Redis session has no server-side object; its entries carry the TTL themselves.

    async def grant_lease(self, ttl: float) -> Lease:
        return Lease(id=new_owner_id()[:16], ttl=ttl)

    async def renew_lease(
        self, lease: Lease, grants: Sequence[Grant], timeout: float
    ) -> Sequence[Grant]:
        if not self._cluster:
            # One script over every holder key: one round trip, however many locks.
            keys = [self._prefix(grant.key) + "holder" for grant in grants]
            args: list[Any] = [ms(lease.ttl), *(grant.owner.owner for grant in grants)]
            with self._errors("renew"):
                lost = await self._renew(keys=keys, args=args)
            return [grants[int(i) - 1] for i in lost]
        return await self._renew_per_slot(lease, grants)

    async def _renew_per_slot(self, lease: Lease, grants: Sequence[Grant]) -> Sequence[Grant]:
        """On Cluster a script may only touch keys of one slot: one script call per slot, all in
        one pipeline (one round trip per node that serves any of them)."""
        by_slot: dict[int, list[Grant]] = {}
        for grant in grants:
            by_slot.setdefault(key_slot(self._prefix(grant.key).encode()), []).append(grant)
        groups = list(by_slot.values())
        for attempt in (1, 2):
            try:
                with self._errors("renew"):
                    pipe = self._client.pipeline()
                    for group in groups:
                        keys = [self._prefix(grant.key) + "holder" for grant in group]
                        # (execute_command: redis-py blocks its pipelined evalsha() on Cluster,
                        # but routes the raw command by its keys' slot.)
                        pipe.execute_command("EVALSHA", self._renew.sha, len(keys), *keys,
                                             ms(lease.ttl),
                                             *(grant.owner.owner for grant in group))  # fmt: skip
                    replies = await pipe.execute()
                break
            except BackendError as exc:
                if attempt == 2 or not isinstance(exc.__cause__, redis_errors.NoScriptError):
                    raise
                with self._errors("load script"):
                    await self._client.script_load(lua.RENEW)
        return [group[int(i) - 1] for group, lost in zip(groups, replies, strict=True)
                for i in lost]  # fmt: skip

    async def revoke_lease(self, lease: Lease) -> None:
        return None  # the session released its entries one by one before this

    # Contenders.

    async def acquire(
        self, lease: Lease, key: str, owner: OwnerInfo, deadline: float | None, mode: Mode
    ) -> Grant | None:
        if mode != EXCLUSIVE:  # not yet: [rwlock]/[semaphore] bring the shared modes here
            raise ConfigurationError(f"{self.scheme}: {mode.name} mode is not supported yet")
        p = self._prefix(key)
        keys = [p + "holder", p + "token", p + "queue", p + "seq"]
        flags = self._flags(key)
        try_once = deadline is not None and deadline <= _compat.monotonic()
        args: list[Any] = [
            owner.owner,
            ms(lease.ttl),
            owner.meta,
            flags if try_once else flags + "q",
        ]
        with self._errors("acquire"):
            granted, token, extra = await self._run(self._acquire, keys, args)
        if granted:
            return Grant(key, owner, int(token), lease, from_us(extra))
        if try_once:
            return None
        pttl = int(extra)
        done = False
        try:
            signal = p + "s:" + owner.owner
            while True:
                remaining = math.inf if deadline is None else deadline - _compat.monotonic()
                if remaining <= 0:
                    return None
                # Wake for the grant pushed by a release, when the holder's TTL runs out, or to
                # refresh our record.
                wait = min(remaining, lease.ttl / 3, self._max_block)
                if pttl > 0:
                    wait = min(wait, pttl / 1000 + 0.001)
                with self._errors("wait"):
                    pushed = await self._client.blpop([signal], timeout=max(wait, 0.001))
                _compat.raise_if_cancelled()
                if pushed is not None:
                    token_text, _, at_text = cast(str, pushed[1]).partition(" ")
                    done = True
                    return Grant(key, owner, int(token_text), lease, from_us(at_text))
                with self._errors("acquire"):
                    granted, token, extra = await self._run(self._acquire, keys, args)
                if granted:
                    done = True
                    return Grant(key, owner, int(token), lease, from_us(extra))
                pttl = int(extra)
        finally:
            if not done:
                await self._leave_quietly(key, owner.owner)

    async def _leave_quietly(self, key: str, owner: str) -> None:
        p = self._prefix(key)
        try:
            with self._errors("leave"):
                await self._leave(
                    keys=[p + "holder", p + "token", p + "queue"], args=[owner, self._flags(key)]
                )
        except BackendError:
            pass  # our records expire after the TTL

    async def release(self, grant: Grant) -> bool:
        p = self._prefix(grant.key)
        retried = grant.data == "release sent"
        grant.data = "release sent"
        with self._errors("release"):
            released = await self._run(
                self._release,
                [p + "holder", p + "token", p + "queue"],
                [grant.owner.owner, self._flags(grant.key)],
            )
        # A retry after a lost reply finds nothing: the first attempt released it.
        return bool(released) or retried

    async def check(self, grant: Grant) -> bool:
        with self._errors("check"):
            found = await self._check(
                keys=[self._prefix(grant.key) + "holder"], args=[grant.owner.owner]
            )
        return bool(found)

    async def set_value(self, grant: Grant, value: str) -> bool:
        with self._errors("set value"):
            found = await self._set_value(
                keys=[self._prefix(grant.key) + "holder"],
                args=[grant.owner.owner, json.dumps(value), self._flags(grant.key)],
            )
        return bool(found)

    # Inspection.

    async def holder(self, key: str) -> Holder | None:
        p = self._prefix(key)
        with self._errors("holder"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(p + "holder")
                pipe.pttl(p + "holder")
                record, pttl = await pipe.execute()
        return holder_from_record(key, record, pttl)

    async def contenders(self, key: str) -> list[Holder]:
        p = self._prefix(key)
        with self._errors("contenders"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(p + "holder")
                pipe.pttl(p + "holder")
                pipe.zrange(p + "queue", 0, -1)
                record, pttl, queue = await pipe.execute()
            waiters = await self._client.mget([p + "w:" + o for o in queue]) if queue else []
        found: list[Holder] = []
        current = holder_from_record(key, record, pttl)
        if current is not None:
            found.append(current)
        for owner, record in zip(queue, waiters, strict=True):
            if record is None:
                continue  # dead waiter, dropped at the next grant
            meta = json.loads(cast(str, record).partition(" ")[2])
            found.append(
                Holder(
                    name=key.partition("/")[2],
                    owner=owner,
                    host=meta["host"],
                    pid=int(meta["pid"]),
                    token=0,
                    acquired_at=None,
                    expires_in=None,
                    value=meta.get("value"),
                )
            )
        return found

    async def changes(self, key: str) -> AsyncIterator[None]:
        channel = self._prefix(key) + "changes"
        pubsub = cast(Any, self._client).pubsub(ignore_subscribe_messages=True)
        try:
            with self._errors("subscribe"):
                await pubsub.subscribe(channel)
            yield
            while True:
                with self._errors("observe"):
                    message = await pubsub.get_message(timeout=self._max_block)
                if message is not None:
                    yield
        finally:
            with self._errors("unsubscribe"):
                await pubsub.aclose()

    def forget_after_fork(self) -> None:
        return None  # redis-py's pool notices the new pid and opens fresh connections


class OwnConnection:
    """A connection a driver keeps for its hot path, so a call skips the pool's bookkeeping;
    while it is busy (another thread or task), pool connections are used. Made again in a
    forked child (never the parent's socket). Give every connection back with ``give_back``,
    ``broken=True`` when a reply may still be on its way."""

    __slots__ = ("_busy", "_conn", "_pid", "_pool")

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._conn: Any = None
        self._busy = threading.Lock()
        self._pid = 0

    async def take(self) -> Any:
        if self._pid != os.getpid():
            self._conn = self._pool.make_connection()
            self._busy = threading.Lock()
            self._pid = os.getpid()
        if self._busy.acquire(blocking=False):
            return self._conn
        return await self._pool.get_connection()

    async def give_back(self, conn: Any, *, broken: bool) -> None:
        if broken:
            await conn.disconnect()
        if conn is self._conn:
            self._busy.release()
        else:
            await self._pool.release(conn)

    async def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            await self._conn.disconnect()


class ErrorBoundary:
    """``with ErrorBoundary(address, user, what):`` translates redis-py's exceptions to
    :mod:`tenure.errors`, naming the server and never the password. A plain class: cheaper
    than a generator context manager on the per-acquire path. (Also used by Redlock per node.)
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


def holder_from_record(key: str, record: dict[str, str], pttl: int) -> Holder | None:
    if not record:
        return None
    meta = json.loads(record.get("meta", "{}"))
    value = json.loads(record["value"]) if "value" in record else meta.get("value")
    return Holder(
        name=key.partition("/")[2],
        owner=record["owner"],
        host=meta.get("host", ""),
        pid=int(meta.get("pid", 0)),
        token=int(record["token"]),
        acquired_at=from_us(record["at"]),
        expires_in=max(0.0, pttl / 1000) if pttl >= 0 else None,
        value=value,
    )


def from_us(micros: int | str) -> dt.datetime:
    """A server time in microseconds since the epoch (the scripts' ``at``) as an aware datetime."""
    return _EPOCH + dt.timedelta(microseconds=int(micros))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _flag(options: dict[str, str], name: str) -> bool:
    text = options.get(name, "false").lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, got {text!r}")
