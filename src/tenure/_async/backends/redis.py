"""The ``redis://`` / ``rediss://`` backend: Lua-atomic, fenced, FIFO, woken without polling.

Every operation is one script and one round trip (``_redis_lua`` has the scripts and the key
layout). Scripts are called by SHA and reloaded transparently after a restart or SCRIPT FLUSH.

- **Acquire**: one script grants if the rule allows (``base.grantable``: nobody live queued
  before us, and for an exclusive contender nobody holding; for a shared one no exclusive
  holder and, with a limit, fewer than ``limit`` holders), bumping the fencing counter in the
  same script; otherwise it queues us (FIFO) with a record that carries our TTL, mode and
  metadata. A waiter then blocks in BLPOP on its own signal list. A release **grants
  directly** to the waiters that may now go (one writer, or the run of readers at the head, or
  the next permit waiter): each becomes a holder, with its own TTL and a new token, and the
  grant is pushed onto its list, so the woken waiter returns without another round trip. The
  BLPOP also ends when the first holder's TTL runs out (the script tells us when), so a dead
  holder is replaced after its TTL, and at least every TTL/3 to refresh our record: a waiter
  that dies is skipped after its TTL. A waiter that gives up (deadline, cancellation, error)
  runs the leave script, which also gives back a grant pushed to it meanwhile and passes the
  key on.
- **Release** (``release`` below): deletes our entry only if it is still ours, then grants to
  the waiters that may now go.
- **Renew**: one script over all the session's entries (exclusive and shared), where still
  ours; it returns the entries that are not (deleted or taken), which the session reports as
  lost.
- **Semaphore limit**: carried by every contender's record; the acquire script refuses another
  limit while the key has live contenders, and the driver raises ``limit_mismatch``.

Redis replication is asynchronous: after a failover (Sentinel, Cluster) a replica may not have
the lock, and a second client can acquire it. The fencing token protects the resource in that
case only if the counter survived; see docs/semantics.md.
"""

from __future__ import annotations

import json
import math
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
from ..._url import ParsedURL, bool_option, seconds_option
from ...errors import BackendError, ConfigurationError
from .. import _compat
from ._redis_common import (
    SSL_OPTIONS,
    ErrorBoundary,
    OwnConnection,
    Scripts,
    database,
    entry_key,
    from_us,
    holders_from_reply,
    mode_args,
    ms,
    prefix,
    ssl_settings,
)
from .base import Grant, Lease, Mode, limit_mismatch

__all__ = ["RedisDriver"]

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
            *SSL_OPTIONS,
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
        db = database(url)
        self._address = f"{self._host}:{self._port}"
        self._url = url
        self._namespace = namespace
        timeouts = {name: seconds_option(options, name, 5.0) for name in _FLOAT_OPTIONS}
        self._socket_timeout = timeouts["socket_timeout"]
        # Longest single BLPOP: it must end before the socket timeout does.
        self._max_block = max(0.05, self._socket_timeout - 0.5)
        max_connections = options.get("max_connections")
        self._cluster = bool_option(options, "cluster")
        common: dict[str, Any] = dict(
            host=self._host,
            port=self._port,
            username=url.username,
            password=url.password,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=timeouts["connect_timeout"],
            decode_responses=True,
            **ssl_settings(options, url.scheme == "rediss", "rediss://"),
        )
        # Either client: the commands we use are the same; the cluster client routes each one
        # (and each script call) to the node of its keys' slot.
        self._client: Any
        if self._cluster:
            if db != 0:
                raise ConfigurationError("Redis Cluster has only database 0")
            if max_connections is not None:
                common["max_connections"] = int(max_connections)
            self._client = RedisCluster(**common)
        else:
            self._client = redis_client.Redis(
                db=db,
                retry=Retry(NoBackoff(), 0),  # we retry ourselves, knowing what is idempotent
                max_connections=None if max_connections is None else int(max_connections),
                **common,
            )
        self._own = None if self._cluster else OwnConnection(self._client.connection_pool)
        self._scripts = Scripts(self._client)

    def __repr__(self) -> str:
        return f"RedisDriver({self._url.redacted()!r})"

    def _errors(self, what: str) -> ErrorBoundary:
        """Translate redis-py's exceptions at this one boundary (``with self._errors(...):``)."""
        return ErrorBoundary(self._address, self._url.username, what)

    def _prefix(self, key: str) -> str:
        return prefix(self._namespace, key)

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
            # One script over every entry: one round trip, however many locks.
            keys = [entry_key(self._prefix(grant.key), grant.mode) for grant in grants]
            args: list[Any] = [ms(lease.ttl), *(grant.owner.owner for grant in grants)]
            with self._errors("renew"):
                lost = await self._scripts.renew(keys=keys, args=args)
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
                        keys = [entry_key(self._prefix(g.key), g.mode) for g in group]
                        # (execute_command: redis-py blocks its pipelined evalsha() on Cluster,
                        # but routes the raw command by its keys' slot.)
                        pipe.execute_command("EVALSHA", self._scripts.renew.sha, len(keys), *keys,
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
        p = self._prefix(key)
        keys = [p + "holder"]
        flags = self._flags(key)
        try_once = deadline is not None and deadline <= _compat.monotonic()
        args: list[Any] = [
            owner.owner,
            ms(lease.ttl),
            owner.meta,
            flags if try_once else flags + "q",
            *mode_args(mode),
        ]
        # Leave the queue unless granted: also when cancelled while the first reply is on its
        # way (the script may have queued us); not when that reply was lost, for the core's
        # retry (same owner) finds our entry, and our place in the queue.
        leave = not try_once
        try:
            try:
                with self._errors("acquire"):
                    reply = await self._run(self._scripts.acquire, keys, args)
            except (BackendError, ConfigurationError):
                leave = False
                raise
            grant = _granted(key, owner, lease, mode, reply)
            signal = p + "s:" + owner.owner
            while grant is None and not try_once:
                remaining = math.inf if deadline is None else deadline - _compat.monotonic()
                if remaining <= 0:
                    return None
                # Wake for the grant pushed by a release, when the first holder's TTL runs out
                # (the script said when), or to refresh our record.
                wait = min(remaining, lease.ttl / 3, self._max_block)
                if int(reply[2]) > 0:
                    wait = min(wait, int(reply[2]) / 1000 + 0.001)
                with self._errors("wait"):
                    pushed = await self._client.blpop([signal], timeout=max(wait, 0.001))
                _compat.raise_if_cancelled()
                if pushed is not None:
                    token, _, at = cast(str, pushed[1]).partition(" ")
                    grant = Grant(key, owner, int(token), lease, from_us(at), mode=mode)
                    break
                with self._errors("acquire"):
                    reply = await self._run(self._scripts.acquire, keys, args)
                grant = _granted(key, owner, lease, mode, reply)
            leave = False
            return grant
        finally:
            if leave:
                await self._leave_quietly(key, owner.owner)

    async def _leave_quietly(self, key: str, owner: str) -> None:
        try:
            with self._errors("leave"):
                await self._scripts.leave(
                    keys=[self._prefix(key) + "holder"], args=[owner, self._flags(key)]
                )
        except BackendError:
            pass  # our records expire after the TTL

    async def release(self, grant: Grant) -> bool:
        with self._errors("release"):
            released = await self._run(
                self._scripts.release,
                [self._prefix(grant.key) + "holder"],
                [grant.owner.owner, self._flags(grant.key)],
            )
        return bool(released)

    async def check(self, grant: Grant) -> bool:
        with self._errors("check"):
            found = await self._scripts.check(
                keys=[entry_key(self._prefix(grant.key), grant.mode)], args=[grant.owner.owner]
            )
        return bool(found)

    async def set_value(self, grant: Grant, value: str) -> bool:
        with self._errors("set value"):
            found = await self._scripts.set_value(
                keys=[self._prefix(grant.key) + "holder"],
                args=[grant.owner.owner, json.dumps(value), self._flags(grant.key)],
            )
        return bool(found)

    # Inspection: one read-only script.

    async def holder(self, key: str) -> Holder | None:
        holders = (await self._inspect(key))[0]
        return holders[0] if holders else None

    async def contenders(self, key: str) -> list[Holder]:
        holders, waiters = await self._inspect(key)
        return holders + waiters

    async def _inspect(self, key: str) -> tuple[list[Holder], list[Holder]]:
        with self._errors("inspect"):
            reply = await self._scripts.inspect(keys=[self._prefix(key) + "holder"])
        return holders_from_reply(key, reply)

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


def _granted(key: str, owner: OwnerInfo, lease: Lease, mode: Mode, reply: Any) -> Grant | None:
    """The grant in an acquire script's reply, or None if we wait (``limit_mismatch`` if the
    semaphore's stored limit is another)."""
    granted, token, at = reply
    if granted == -1:
        raise limit_mismatch(key.partition("/")[2], int(token), mode.limit)
    return Grant(key, owner, int(token), lease, from_us(at), mode=mode) if granted == 1 else None
