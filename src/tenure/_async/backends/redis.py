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

**Sentinel** (``redis+sentinel://s1:26379,s2:26379/<service>?db=0``, ``rediss+sentinel://``):
redis-py's Sentinel client finds the master through the sentinels on every new connection; a
call that fails on a dead or demoted master is a ``BackendUnavailableError`` that the core
retries, on a fresh connection to whatever master the sentinels then name. **Cluster**
(``?cluster=true``): keys of one name share a hash tag (one slot); acquire and release go to
a kept connection to the slot's master (from redis-py's cluster client's slot map), and
through the cluster client itself, which follows MOVED/ASK and reloads the map, when a node
redirects us or fails; renewal sends one script per slot.

Redis replication is asynchronous: after a failover (Sentinel, Cluster) the promoted replica
may not have the lock, and a second client can acquire it. The renewal then finds our entry
gone and the session reports the lock lost; meanwhile the fencing token protects the resource:
a grant's token is max(counter + 1, the server clock in µs), so the promoted replica, whose
clock is past the old master's last grant, hands out a larger one even with an older counter
(see ``_redis_lua`` and docs/semantics.md).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar, cast

import redis.asyncio as redis_client  # tenure: async-only
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster  # tenure: async-only
from redis.asyncio.retry import Retry  # tenure: async-only
from redis.asyncio.sentinel import Sentinel  # tenure: async-only
from redis.backoff import NoBackoff
from redis.crc import key_slot

# tenure: sync import redis as redis_client
# tenure: sync from redis.cluster import RedisCluster
# tenure: sync from redis.retry import Retry
# tenure: sync from redis.sentinel import Sentinel
from ... import _redis_lua as lua
from ..._names import OwnerInfo, new_owner_id
from ..._types import Capabilities, Holder
from ..._url import ParsedURL, bool_option, seconds_option
from ...errors import BackendError, BackendUnavailableError, ConfigurationError
from .. import _compat
from ._redis_common import (
    LIST,
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
    names_in_use,
    pack_command,
    prefix,
    reply_from_json,
    ssl_settings,
)
from .base import Grant, Lease, Mode, hold_left, limit_mismatch, refreshes

__all__ = ["RedisDriver"]

_FLOAT_OPTIONS = ("socket_timeout", "connect_timeout")
#: Replies that mean the script did not run (so running it again elsewhere is safe).
_NOT_RUN = (
    redis_errors.NoScriptError,
    redis_errors.AskError,  # and MovedError
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)
_SENTINEL_OPTIONS = ("db", "sentinel_username", "sentinel_password")


class RedisDriver:
    """Driver for ``redis://[user:password@]host:port/db`` and ``rediss://`` (TLS), and for
    ``redis+sentinel://[user:password@]s1:26379,s2:26379/service?db=0`` and
    ``rediss+sentinel://`` (the URL's credentials are the data nodes'; the sentinels' own come
    from the options ``sentinel_username`` and ``sentinel_password``)."""

    scheme: ClassVar[str] = "redis"
    capabilities: ClassVar[Capabilities] = Capabilities(
        leases=True,
        fifo=True,
        min_ttl=0.1,
        expiry_slack=0.0,
        wakeup="per-waiter signal list (BLPOP) pushed by the release script",
        min_hold=True,  # the release script keeps the entry with PEXPIRE
    )
    options: ClassVar[frozenset[str]] = frozenset(
        {
            "socket_timeout",
            "connect_timeout",
            *SSL_OPTIONS,
            "max_connections",
            "cluster",
            *_SENTINEL_OPTIONS,
        }
    )

    def __init__(self, url: ParsedURL, *, namespace: str, options: dict[str, str]) -> None:
        sentinel = url.scheme.endswith("+sentinel")
        hosts = url.hosts_with_default(26379 if sentinel else 6379)
        if sentinel:
            db, self._service = _sentinel_target(url, options)
            self._address = f"service {self._service!r} via sentinels " + ",".join(
                f"{h}:{p}" for h, p in hosts
            )
        else:
            if len(hosts) != 1:
                raise ConfigurationError(
                    f"{url.scheme}:// takes one host, got {len(hosts)}; use "
                    "redlock://h1:p1,h2:p2,h3:p3 for several independent masters, or "
                    "redis+sentinel://s1:26379,s2:26379/service for Sentinel"
                )
            if any(name in options for name in _SENTINEL_OPTIONS):
                raise ConfigurationError(
                    f"{', '.join(_SENTINEL_OPTIONS)} are options of redis+sentinel:// "
                    f"(the database of {url.scheme}:// is the URL's path)"
                )
            db = database(url)
            self._address = "{}:{}".format(*hosts[0])
        self._url = url
        self._db = db
        self._namespace = namespace
        timeouts = {name: seconds_option(options, name, 5.0) for name in _FLOAT_OPTIONS}
        self._socket_timeout = timeouts["socket_timeout"]
        # Longest single BLPOP: it must end before the socket timeout does.
        self._max_block = max(0.05, self._socket_timeout - 0.5)
        max_connections = options.get("max_connections")
        self._cluster = bool_option(options, "cluster")
        tls = ssl_settings(options, url.scheme.startswith("rediss"), "rediss://")
        common: dict[str, Any] = dict(
            username=url.username,
            password=url.password,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=timeouts["connect_timeout"],
            decode_responses=True,
            **tls,
        )
        # Any client: the commands we use are the same; the cluster client routes each one
        # (and each script call) to the node of its keys' slot, the Sentinel one asks the
        # sentinels for the master whenever it opens a connection.
        self._client: Any
        self._sentinel: Any = None
        if sentinel:
            if self._cluster:
                raise ConfigurationError("cluster=true and Sentinel do not mix")
            self._sentinel = Sentinel(
                hosts,
                sentinel_kwargs=dict(
                    username=options.get("sentinel_username"),
                    password=options.get("sentinel_password"),
                    socket_timeout=timeouts["connect_timeout"],
                    socket_connect_timeout=timeouts["connect_timeout"],
                    decode_responses=True,
                    **tls,
                ),
            )
            self._client = self._sentinel.master_for(
                self._service,
                db=db,
                retry=Retry(NoBackoff(), 0),  # we retry ourselves, on a fresh master lookup
                max_connections=None if max_connections is None else int(max_connections),
                **common,
            )
        elif self._cluster:
            if db != 0:
                raise ConfigurationError("Redis Cluster has only database 0")
            if max_connections is not None:
                common["max_connections"] = int(max_connections)
            self._client = RedisCluster(host=hosts[0][0], port=hosts[0][1], **common)
        else:
            self._client = redis_client.Redis(
                host=hosts[0][0],
                port=hosts[0][1],
                db=db,
                retry=Retry(NoBackoff(), 0),  # we retry ourselves, knowing what is idempotent
                max_connections=None if max_connections is None else int(max_connections),
                **common,
            )
        self._own = None if self._cluster else OwnConnection(self._client.connection_pool)
        # A second kept connection for waiters' BLPOP, so a wait (seconds) never pushes the
        # process's acquires and releases onto pool connections. Connected on first use.
        self._own_wait = None if self._cluster else OwnConnection(self._client.connection_pool)
        # Cluster: a kept connection per master too (a plain client each), found through the
        # cluster client's slot map; a redirection or an error sends the call (and, after an
        # error, the next ones until one succeeds) through the cluster client, which follows
        # MOVED/ASK and reloads the slot map.
        self._node_settings = common
        self._nodes: dict[str, tuple[Any, OwnConnection]] = {}
        self._suspect = False
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
        own = self._own if not self._cluster else self._own_for(keys[0])
        if own is None:
            reply = await script(keys=keys, args=args)
            self._suspect = False
            return reply
        try:
            return await own.call(pack_command("EVALSHA", script.sha, len(keys), *keys, *args))
        except redis_errors.ResponseError as exc:
            # Not run: the server lost its scripts (the script object loads it again), or a
            # cluster node redirects us (the cluster client follows).
            if not isinstance(exc, _NOT_RUN):
                raise
        except redis_errors.RedisError:
            self._suspect = self._cluster
            raise
        return await script(keys=keys, args=args)

    def _own_for(self, key: str) -> OwnConnection | None:
        """Cluster: the kept connection to the master of ``key``'s slot, as the cluster client
        knows it (None: use the cluster client)."""
        if self._suspect:
            return None
        nodes = self._client.nodes_manager.slots_cache.get(_slot(key))
        if not nodes:
            return None
        node = nodes[0]
        found = self._nodes.get(node.name)
        if found is None:
            client = redis_client.Redis(
                host=node.host, port=node.port, retry=Retry(NoBackoff(), 0), **self._node_settings
            )
            found = self._nodes[node.name] = (client, OwnConnection(client.connection_pool))
        return found[1]

    @staticmethod
    def _flags(key: str) -> str:
        # Only elections publish changes (for observe()); locks pay nothing for it.
        return "e" if key.startswith("election/") else ""

    async def connect(self) -> None:
        if self._sentinel is not None:
            await self._find_master()
        try:
            with self._errors("connect"):
                await self._client.ping()
        except BackendError as exc:
            if "DB index" in str(exc.__cause__):
                raise ConfigurationError(
                    f"redis at {self._address} has no database {self._db}"
                ) from exc.__cause__
            raise

    async def _find_master(self) -> None:
        """Ask each sentinel for our service, to tell a wrong service name or credentials (a
        ``ConfigurationError``) from sentinels that are down (``BackendUnavailableError``)."""
        answered, failed = [], []
        for client in self._sentinel.sentinels:
            kwargs = client.connection_pool.connection_kwargs
            where = f"{kwargs['host']}:{kwargs['port']}"
            try:
                masters = await client.sentinel_masters()
            except redis_errors.AuthenticationError as exc:
                raise ConfigurationError(
                    f"redis sentinel at {where} rejected the credentials (options "
                    f"sentinel_username, sentinel_password): {exc}"
                ) from exc
            except redis_errors.RedisError as exc:
                failed.append(f"{where} ({exc})")
                continue
            if self._service in masters:
                return
            answered.append(where)
        if answered:
            raise ConfigurationError(
                f"redis sentinels at {', '.join(answered)} monitor no service {self._service!r}"
            )
        raise BackendUnavailableError("no redis sentinel answered: " + "; ".join(failed))

    async def close(self) -> None:
        with self._errors("close"):
            if self._own is not None:
                await self._own.close()
            if self._own_wait is not None:
                await self._own_wait.close()
            for client, own in self._nodes.values():
                await own.close()
                await client.aclose()
            await self._client.aclose()
            if self._sentinel is not None:
                await self._sentinel.aclose()

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
            by_slot.setdefault(_slot(self._prefix(grant.key)), []).append(grant)
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
                    pushed = await self._blpop(signal, max(wait, 0.001))
                _compat.raise_if_cancelled()
                if pushed is not None and pushed[1] != "w":  # ("w": a min_hold release)
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

    async def _blpop(self, signal: str, timeout: float) -> Any:
        """BLPOP ``signal`` for up to ``timeout`` seconds: None, or the list and the value."""
        if self._own_wait is None:  # (Cluster: the client routes it to the slot's master)
            return await self._client.blpop([signal], timeout=timeout)
        return await self._own_wait.call(pack_command("BLPOP", signal, timeout))

    async def _leave_quietly(self, key: str, owner: str) -> None:
        try:
            with self._errors("leave"):
                await self._scripts.leave(
                    keys=[self._prefix(key) + "holder"], args=[owner, self._flags(key)]
                )
        except BackendError:
            pass  # our records expire after the TTL

    async def release(self, grant: Grant) -> bool:
        # Under min_hold the script keeps the entry, marked ended, for the rest of the hold.
        args: list[Any] = [grant.owner.owner, self._flags(grant.key)]
        hold = hold_left(grant)
        if hold:
            args.append(math.ceil(hold * 1000))
        with self._errors("release"):
            released = await self._run(
                self._scripts.release, [self._prefix(grant.key) + "holder"], args
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

    # Listing (``tenure ls``): one SCAN pass over the namespace's keys, then the read-only
    # inspect script for every name found, pipelined (a round trip per thousand names).

    async def in_use(self) -> dict[str, list[Holder]]:
        with self._errors("list"):
            keys = sorted(await names_in_use(self._client, self._namespace, 5000))
            replies = await self._inspect_all(keys)
        listing: dict[str, list[Holder]] = {}
        for key, reply in zip(keys, replies, strict=True):
            holders, waiters = holders_from_reply(key, reply)
            if holders or waiters:
                listing[key] = holders + waiters
        return listing

    async def _inspect_all(self, keys: list[str]) -> list[Any]:
        if self._cluster:  # (the names are in many slots: one script call each)
            return [await self._scripts.inspect(keys=[self._prefix(k) + "holder"]) for k in keys]
        script = self._client.register_script(LIST)
        replies: list[Any] = []
        for start in range(0, len(keys), 1000):
            batch = [self._prefix(key) + "holder" for key in keys[start : start + 1000]]
            replies.extend(reply_from_json(text) for text in await script(keys=batch))
        return replies

    def namespace_changes(self) -> AsyncIterator[None]:
        # Releases publish nothing for locks (it would cost every release a PUBLISH): look again
        # at a bounded interval.
        return refreshes()


@functools.lru_cache(maxsize=4096)
def _slot(key: str) -> int:
    """The cluster slot of ``key`` (cached: CRC16 in Python costs more than the lookup)."""
    return int(key_slot(key.encode()))


def _sentinel_target(url: ParsedURL, options: dict[str, str]) -> tuple[int, str]:
    """The database (option ``db``) and the service name (the URL's path) of a Sentinel URL."""
    service = url.path.strip("/")
    if not service or "/" in service:
        raise ConfigurationError(
            f"{url.scheme}:// needs the service name as its path, e.g. "
            f"{url.scheme}://s1:26379,s2:26379/mymaster?db=0; got path {url.path!r}"
        )
    text = options.get("db", "0")
    if not text.isdigit():
        raise ConfigurationError(f"redis database (option db) must be a number, got {text!r}")
    return int(text), service


def _granted(key: str, owner: OwnerInfo, lease: Lease, mode: Mode, reply: Any) -> Grant | None:
    """The grant in an acquire script's reply, or None if we wait (``limit_mismatch`` if the
    semaphore's stored limit is another)."""
    granted, token, at = reply
    if granted == -1:
        raise limit_mismatch(key.partition("/")[2], int(token), mode.limit)
    return Grant(key, owner, int(token), lease, from_us(at), mode=mode) if granted == 1 else None
