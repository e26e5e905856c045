"""The ``etcd://`` / ``etcds://`` backend: etcd v3 over gRPC, as etcd's own concurrency Mutex.

Stubs are generated from etcd's protos (``tenure._etcdpb``, ``scripts/gen-etcd-protos.py``); the
same stubs serve ``grpc`` (sync) and ``grpc.aio`` (asyncio).

- **Session** = one etcd lease (``LeaseGrant``, TTL in whole seconds, rounded up). Renewal is one
  ``LeaseKeepAlive`` request (plus, when locks are held, one ``Txn`` that reads our keys, so a
  deleted entry is noticed); etcd answers TTL 0 for a lease it no longer has.
- **Lock keys** are ``<ns>/<kind>/<name>//<lease-id-hex>`` (``//`` cannot occur in a name, so
  the prefix of ``a`` never covers the keys of ``a/b``), attached to the lease, with the owner's
  metadata (JSON) as the value. The queue is the keys under the prefix in create-revision order.
- **Acquire** is one ``Txn``: create my key if absent (else read it), and read the oldest key.
  If mine is the oldest, the lock is held and the **fencing token is my key's create revision**.
  Otherwise I watch only the newest key older than mine (and my own key) for a delete, from the
  revision I read at, then look again: a release wakes exactly one waiter. A waiter whose key
  vanished because its lease expired fails (``LockLostError``), never succeeds.
- **Release** deletes my key only if its create revision is still my token, so a retried
  release after a lost reply cannot delete a newer entry. Try-once, a passed deadline and
  cancellation delete my key at once.

Several endpoints fail over to the next on ``UNAVAILABLE``; every call has a deadline
(``request_timeout``); user/password authentication sends the token as metadata and gets a new
one when etcd says it is invalid. gRPC errors are translated in :meth:`EtcdDriver._call` only.
"""

from __future__ import annotations

import asyncio  # tenure: async-only
import contextlib
import datetime as dt
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import grpc

from ..._etcdpb import kv_pb2
from ..._etcdpb import rpc_pb2 as pb
from ..._etcdpb import rpc_pb2_grpc as pb_grpc
from ..._names import OwnerInfo
from ..._types import Capabilities, Holder, utcnow
from ..._url import ParsedURL, seconds_option
from ...errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    LockLostError,
)
from .. import _compat
from .base import Grant, Lease, LeaseExpired

__all__ = ["EtcdDriver"]

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...] | None

#: Keys whose constant acquire-Txn parts are kept built.
_OPS_CACHE = 1024
#: Retired channels kept open (their calls finish) before the oldest is closed.
_KEEP_RETIRED = 4
#: etcd refuses more operations than this in one Txn (its --max-txn-ops default).
MAX_TXN_OPS = 128
_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # A channel of its own connection: after a reset, a new channel must not reuse the old,
    # broken connection from gRPC's process-wide subchannel pool.
    ("grpc.use_local_subchannel_pool", 1),
]
_CREATE = pb.RangeRequest.SortTarget.CREATE
_ASCEND = pb.RangeRequest.SortOrder.ASCEND
_DESCEND = pb.RangeRequest.SortOrder.DESCEND


class _Entry:
    """A contender's key, as ``Grant.data``."""

    __slots__ = ("key", "release_sent")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.release_sent = False


class _Older:
    """My predecessor in the queue: its key and create revision, and the revision read at."""

    __slots__ = ("key", "read_at", "revision")

    def __init__(self, key: bytes, revision: int, read_at: int) -> None:
        self.key = key
        self.revision = revision
        self.read_at = read_at


_UNKNOWN = object()  # the predecessor is to be looked up
_GONE = object()  # my own key is gone


class _Endpoint:
    """One member's channel and stubs."""

    __slots__ = ("address", "auth", "channel", "kv", "lease", "watch")

    def __init__(self, address: str, channel: Any) -> None:
        self.address = address
        self.channel = channel
        self.kv = pb_grpc.KVStub(channel)
        self.lease = pb_grpc.LeaseStub(channel)
        self.watch = pb_grpc.WatchStub(channel)
        self.auth = pb_grpc.AuthStub(channel)


class EtcdDriver:
    """Driver for ``etcd://[user:password@]h1:p1,h2:p2`` and ``etcds://`` (TLS)."""

    scheme: ClassVar[str] = "etcd"
    capabilities: ClassVar[Capabilities] = Capabilities(
        leases=True,
        fifo=True,
        min_ttl=1.0,  # etcd lease TTLs are whole seconds (and a server may enforce more)
        expiry_slack=1.0,  # the leader's lessor revokes expired leases every 500 ms
        wakeup="watch on the newest older key's delete (one waiter woken per release)",
    )
    options: ClassVar[frozenset[str]] = frozenset({"request_timeout", "cacert", "cert", "key"})

    def __init__(self, url: ParsedURL, *, namespace: str, options: dict[str, str]) -> None:
        self._url = url
        self._addresses = [f"{h}:{p}" for h, p in url.hosts_with_default(2379)]
        self._namespace = namespace
        self._request_timeout = seconds_option(options, "request_timeout", 5.0)
        self._credentials: Any = None
        tls_files = {name: options[name] for name in ("cacert", "cert", "key") if name in options}
        if url.scheme == "etcds":
            read = {name: _read_file(name, path) for name, path in tls_files.items()}
            if ("cert" in read) != ("key" in read):
                raise ConfigurationError("etcds:// needs both cert and key, or neither")
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=read.get("cacert"),
                private_key=read.get("key"),
                certificate_chain=read.get("cert"),
            )
        elif tls_files:
            raise ConfigurationError(
                f"{', '.join(sorted(tls_files))} need an etcds:// URL (TLS), not etcd://"
            )
        if (url.username is None) != (url.password is None):
            raise ConfigurationError("etcd authentication needs both a user and a password")
        self._endpoints: dict[str, _Endpoint] = {}
        self._retired: list[Any] = []  # channels given up on, closed a little later
        self._ops_cache: dict[bytes, tuple[Any, Any, Any, Any]] = {}
        self._current = 0
        self._token: str | None = None
        self._state = _compat.StateLock()

    def __repr__(self) -> str:
        return f"EtcdDriver({self._url.redacted()!r})"

    # The one boundary where gRPC's errors become tenure's.

    def _endpoint(self) -> _Endpoint:
        endpoint = self._endpoints.get(self._addresses[self._current % len(self._addresses)])
        if endpoint is not None:
            return endpoint  # the common case, without the lock (a dict read is atomic)
        with self._state:
            address = self._addresses[self._current % len(self._addresses)]
            endpoint = self._endpoints.get(address)
            if endpoint is None:
                endpoint = self._endpoints[address] = _Endpoint(address, self._channel(address))
            return endpoint

    def _channel(self, address: str) -> Any:
        credentials, options = self._credentials, _OPTIONS
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=options)  # tenure: async-only
            # tenure: sync return grpc.insecure_channel(address, options=options)
        return grpc.aio.secure_channel(address, credentials, options=options)  # tenure: async-only
        # tenure: sync return grpc.secure_channel(address, credentials, options=options)

    async def _reset(self, endpoint: _Endpoint) -> None:
        """Give up on ``endpoint``'s connection (broken or silent): the next call reconnects.

        Its channel is closed only after a few more resets, so that calls still running on it
        (a waiter's watch) end on their own deadline rather than being cut off at once.
        """
        with self._state:
            if self._endpoints.get(endpoint.address) is not endpoint:
                return
            del self._endpoints[endpoint.address]
            self._retired.append(endpoint.channel)
            old = self._retired[:-_KEEP_RETIRED] if len(self._retired) > _KEEP_RETIRED else []
            del self._retired[: len(old)]
        for channel in old:
            await channel.close()

    def _fail_over(self, endpoint: _Endpoint) -> None:
        with self._state:
            if self._addresses[self._current % len(self._addresses)] == endpoint.address:
                self._current += 1

    async def _metadata(self, endpoint: _Endpoint) -> Metadata:
        if self._url.username is None:
            return None
        token = self._token
        if token is None:
            request = pb.AuthenticateRequest(name=self._url.username, password=self._url.password)
            reply = await endpoint.auth.Authenticate(request, timeout=self._request_timeout)
            token = self._token = reply.token
        return (("token", token),)

    async def _call(self, what: str, call: Callable[[_Endpoint, Metadata], Awaitable[T]]) -> T:
        """Run ``call`` on the current member: fail over on UNAVAILABLE, re-authenticate once."""
        tried = 0
        authenticated = False
        while True:
            endpoint = self._endpoint()
            try:
                return await call(endpoint, await self._metadata(endpoint))
            except grpc.RpcError as exc:
                code = exc.code()
                broken = _connection_broken(exc)
                if broken or _deadline_exceeded(exc):
                    await self._reset(endpoint)
                if broken and tried + 1 < 2 * len(self._addresses):
                    tried += 1  # once more on a new connection (all our calls are idempotent)
                    continue
                if code == grpc.StatusCode.UNAVAILABLE and tried + 1 < len(self._addresses):
                    tried += 1
                    self._fail_over(endpoint)
                    continue
                if _token_expired(exc) and self._url.username is not None and not authenticated:
                    authenticated = True
                    self._token = None
                    continue
                raise self._error(exc, endpoint.address, what) from exc

    def _error(self, exc: grpc.RpcError, address: str, what: str) -> Exception:
        code, details = exc.code(), exc.details() or ""
        where = f"etcd at {address}"
        if code == grpc.StatusCode.UNAVAILABLE or _connection_broken(exc):
            if len(self._addresses) > 1:
                where = f"etcd at {', '.join(self._addresses)} (last tried {address})"
            return BackendUnavailableError(f"{where} is unavailable ({what}): {details}")
        if _deadline_exceeded(exc):
            return BackendTimeoutError(f"{where} did not answer in time ({what})")
        if "authentication failed" in details or code == grpc.StatusCode.UNAUTHENTICATED:
            return ConfigurationError(
                f"{where} rejected the credentials of user {self._url.username!r}: {details}"
            )
        if "user name is empty" in details or code == grpc.StatusCode.PERMISSION_DENIED:
            return ConfigurationError(f"{where} refused {what}: {details}")
        if "lease not found" in details:
            return LeaseExpired(details)
        return BackendError(f"{where} failed ({what}): {details}")

    # Keys.

    def _prefix(self, key: str) -> bytes:
        return f"{self._namespace}/{key}//".encode()

    def _key(self, key: str, lease: Lease) -> bytes:
        return self._prefix(key) + lease.id.encode()

    async def _txn(
        self, what: str, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> Any:
        request = pb.TxnRequest(compare=compare, success=success, failure=failure)

        async def call(endpoint: _Endpoint, metadata: Metadata) -> Any:
            return await endpoint.kv.Txn(request, timeout=self._request_timeout, metadata=metadata)

        return await self._call(what, call)

    async def _range(self, what: str, request: Any) -> Any:
        async def call(endpoint: _Endpoint, metadata: Metadata) -> Any:
            return await endpoint.kv.Range(
                request, timeout=self._request_timeout, metadata=metadata
            )

        return await self._call(what, call)

    # Connection.

    async def connect(self) -> None:
        # A read checks the address, the credentials and the permission on our namespace.
        prefix = f"{self._namespace}/".encode()
        await self._range(
            "connect",
            pb.RangeRequest(key=prefix, range_end=_prefix_end(prefix), limit=1, keys_only=True),
        )

    async def close(self) -> None:
        with self._state:
            channels = [e.channel for e in self._endpoints.values()] + self._retired
            self._endpoints, self._retired = {}, []
        for channel in channels:
            await channel.close()

    def forget_after_fork(self) -> None:
        # The parent's channels belong to the parent; the child opens its own.
        self._endpoints, self._retired = {}, []
        self._state = _compat.StateLock()

    # Leases.

    async def grant_lease(self, ttl: float) -> Lease:
        seconds = max(1, math.ceil(ttl))

        async def call(endpoint: _Endpoint, metadata: Metadata) -> Any:
            return await endpoint.lease.LeaseGrant(
                pb.LeaseGrantRequest(TTL=seconds), timeout=self._request_timeout, metadata=metadata
            )

        reply = await self._call("grant lease", call)
        lease = Lease(id=f"{reply.ID:016x}", ttl=ttl, data=reply.ID)
        granted = int(reply.TTL)
        if granted > seconds:
            # etcd raises a TTL below its minimum silently; we refuse instead.
            await self.revoke_lease(lease)
            raise ConfigurationError(
                f"ttl {ttl} s is below the minimum lease TTL of this etcd server: "
                f"{granted} s (1.5 x its election timeout)"
            )
        return lease

    async def renew_lease(
        self, lease: Lease, grants: Sequence[Grant], timeout: float
    ) -> Sequence[Grant]:
        request = pb.LeaseKeepAliveRequest(ID=lease.data)

        async def call(endpoint: _Endpoint, metadata: Metadata) -> Any:
            stream = endpoint.lease.LeaseKeepAlive(
                iter([request]), timeout=timeout, metadata=metadata
            )
            try:
                async for reply in stream:
                    return reply
                return None
            finally:
                stream.cancel()

        reply = await self._call("renew", call)
        if reply is None or reply.TTL <= 0:
            raise LeaseExpired(f"etcd has no lease {lease.id}")
        gone: list[Grant] = []
        for start in range(0, len(grants), MAX_TXN_OPS):
            chunk = grants[start : start + MAX_TXN_OPS]
            ops = [
                pb.RequestOp(request_range=pb.RangeRequest(key=_entry(grant).key, keys_only=True))
                for grant in chunk
            ]
            found = await self._txn("renew", [], ops)
            for grant, response in zip(chunk, found.responses, strict=True):
                kvs = response.response_range.kvs
                if not kvs or kvs[0].create_revision != grant.token:
                    gone.append(grant)
        return gone

    async def revoke_lease(self, lease: Lease) -> None:
        async def call(endpoint: _Endpoint, metadata: Metadata) -> Any:
            return await endpoint.lease.LeaseRevoke(
                pb.LeaseRevokeRequest(ID=lease.data),
                timeout=self._request_timeout,
                metadata=metadata,
            )

        with contextlib.suppress(LeaseExpired):  # already gone
            await self._call("revoke lease", call)

    # Contenders.

    async def acquire(
        self, lease: Lease, key: str, owner: OwnerInfo, deadline: float | None
    ) -> Grant | None:
        prefix = self._prefix(key)
        me = self._key(key, lease)
        acquired_at = utcnow()
        value = _value(owner, acquired_at, owner.value)
        try_once = deadline is not None and deadline <= _compat.monotonic()
        try:
            mine, older = await self._enqueue(prefix, me, lease, owner, value)
        except LeaseExpired as exc:
            raise self._lost_while_waiting(lease, key) from exc
        entry = _Entry(me)
        if older is None:
            return Grant(key, owner, mine, lease, acquired_at, entry)
        if try_once:
            await self._leave_quietly(me, mine)
            return None
        done = False
        try:
            while True:
                remaining = math.inf if deadline is None else deadline - _compat.monotonic()
                if remaining <= 0:
                    return None
                if older is _UNKNOWN:
                    older = await self._predecessor(prefix, me, mine)
                if older is _GONE:
                    # My key is gone: my lease expired (fail), or someone deleted it (queue again).
                    if not await self._lease_alive(lease):
                        raise self._lost_while_waiting(lease, key)
                    try:
                        mine, older = await self._enqueue(prefix, me, lease, owner, value)
                    except LeaseExpired as exc:
                        raise self._lost_while_waiting(lease, key) from exc
                    continue
                if older is None:
                    done = True
                    return Grant(key, owner, mine, lease, acquired_at, entry)
                # Woken by the predecessor's (or my own key's) delete; at least every TTL, to
                # notice an expired lease of mine even if no event reaches us.
                assert isinstance(older, _Older)
                await self._wait_for_delete(older, me, mine, min(remaining, lease.ttl))
                older = _UNKNOWN
        finally:
            if not done:
                await asyncio.shield(self._leave_quietly(me, mine))  # tenure: async-only
                # tenure: sync self._leave_quietly(me, mine)

    def _lost_while_waiting(self, lease: Lease, key: str) -> LockLostError:
        reason = f"etcd lease {lease.id} expired while waiting for {key!r}"
        lease.expired(reason)
        return LockLostError(reason, name=key.partition("/")[2])

    async def _enqueue(
        self, prefix: bytes, me: bytes, lease: Lease, owner: OwnerInfo, value: bytes
    ) -> tuple[int, _Older | object | None]:
        """One Txn: create my key unless it exists, and read the oldest and my predecessor.

        Returns my create revision and my predecessor: None if I am first, ``_UNKNOWN`` if my
        key already existed (a retry; the caller looks it up).
        """
        absent, oldest, newest_two, read_me = self._enqueue_ops(prefix, me)
        put = pb.RequestOp(request_put=pb.PutRequest(key=me, value=value, lease=lease.data))
        for _ in range(3):
            reply = await self._txn("acquire", absent, [put, oldest, newest_two], read_me)
            if reply.succeeded:
                mine = reply.header.revision
                first = reply.responses[1].response_range.kvs[0].create_revision == mine
                if first:
                    return mine, None
                kvs = reply.responses[2].response_range.kvs
                return mine, _Older(kvs[1].key, kvs[1].create_revision, mine)
            kv = reply.responses[0].response_range.kvs[0]
            mine = kv.create_revision
            if _owner_of(kv.value) != owner.owner:
                # A stale entry of this session (an earlier contender whose clean-up failed):
                # replace it, so nothing that still knows its revision touches ours.
                await self._delete_if(me, mine)
                continue
            kvs = reply.responses[1].response_range.kvs
            return mine, (None if not kvs or kvs[0].create_revision == mine else _UNKNOWN)
        raise BackendError(f"etcd: could not replace a stale entry {me!r}")

    def _enqueue_ops(self, prefix: bytes, me: bytes) -> tuple[Any, Any, Any, Any]:
        """The parts of the acquire Txn that never change for one key (built once, cached)."""
        ops = self._ops_cache.get(me)
        if ops is None:
            end = _prefix_end(prefix)
            oldest = pb.RequestOp(
                request_range=pb.RangeRequest(key=prefix, range_end=end, sort_order=_ASCEND,
                                              sort_target=_CREATE, limit=1, keys_only=True)
            )  # fmt: skip
            # A key just created is the newest: the one before it in create order is my
            # predecessor.
            newest_two = pb.RequestOp(
                request_range=pb.RangeRequest(key=prefix, range_end=end, sort_order=_DESCEND,
                                              sort_target=_CREATE, limit=2, keys_only=True)
            )  # fmt: skip
            read_me = [pb.RequestOp(request_range=pb.RangeRequest(key=me)), oldest]
            ops = ([_created_at(me, 0)], oldest, newest_two, read_me)
            if len(self._ops_cache) >= _OPS_CACHE:
                self._ops_cache.clear()
            self._ops_cache[me] = ops
        return ops

    async def _predecessor(self, prefix: bytes, me: bytes, mine: int) -> _Older | object | None:
        """The newest key older than mine (None: I am first; ``_GONE``: my key is gone)."""
        reply = await self._txn(
            "wait",
            [_created_at(me, mine)],
            [
                pb.RequestOp(
                    request_range=pb.RangeRequest(
                        key=prefix,
                        range_end=_prefix_end(prefix),
                        sort_order=_DESCEND,
                        sort_target=_CREATE,
                        max_create_revision=mine - 1,
                        limit=1,
                        keys_only=True,
                    )
                )
            ],
        )
        if not reply.succeeded:
            return _GONE
        kvs = reply.responses[0].response_range.kvs
        if not kvs:
            return None
        return _Older(kvs[0].key, kvs[0].create_revision, reply.header.revision)

    async def _wait_for_delete(self, older: _Older, me: bytes, mine: int, timeout: float) -> None:
        """Return once ``older`` or my own key may be gone, or at ``timeout``.

        The watches start at the server's current revision (a watch from an older revision is
        served by etcd's catch-up loop, up to 100 ms late). If anything was written since
        ``older`` was read, one Txn checks that both keys are still there before waiting.
        """
        requests = [
            pb.WatchRequest(
                create_request=pb.WatchCreateRequest(key=key, filters=[pb.WatchCreateRequest.NOPUT])
            )
            for key in (older.key, me)
        ]
        both_there = pb.TxnRequest(
            compare=[_created_at(older.key, older.revision), _created_at(me, mine)]
        )

        async def call(endpoint: _Endpoint, metadata: Metadata) -> None:
            stream = endpoint.watch.Watch(iter(requests), timeout=timeout, metadata=metadata)
            created = 0
            try:
                async for reply in stream:
                    if reply.events or reply.canceled:
                        return
                    if reply.created:
                        created += 1
                        if created == len(requests) and reply.header.revision > older.read_at:
                            check = await endpoint.kv.Txn(
                                both_there, timeout=self._request_timeout, metadata=metadata
                            )
                            if not check.succeeded:
                                return
            except grpc.RpcError as exc:
                if not _deadline_exceeded(exc):
                    raise
            finally:
                stream.cancel()

        await self._call("wait", call)

    async def _lease_alive(self, lease: Lease) -> bool:
        async def call(endpoint: _Endpoint, metadata: Metadata) -> Any:
            return await endpoint.lease.LeaseTimeToLive(
                pb.LeaseTimeToLiveRequest(ID=lease.data),
                timeout=self._request_timeout,
                metadata=metadata,
            )

        reply = await self._call("lease", call)
        return bool(reply.TTL > 0)

    async def _delete_if(self, me: bytes, revision: int) -> bool:
        reply = await self._txn(
            "release",
            [_created_at(me, revision)],
            [pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=me))],
        )
        return bool(reply.succeeded)

    async def _leave_quietly(self, me: bytes, revision: int) -> None:
        with contextlib.suppress(BackendError, LeaseExpired):  # the key goes with the lease
            await self._delete_if(me, revision)

    async def release(self, grant: Grant) -> bool:
        entry = _entry(grant)
        retried, entry.release_sent = entry.release_sent, True
        released = await self._delete_if(entry.key, grant.token)
        # A retry after a lost reply finds nothing: the first attempt released it.
        return released or retried

    async def check(self, grant: Grant) -> bool:
        reply = await self._range("check", pb.RangeRequest(key=_entry(grant).key, keys_only=True))
        return bool(reply.kvs) and reply.kvs[0].create_revision == grant.token

    async def set_value(self, grant: Grant, value: str) -> bool:
        entry = _entry(grant)
        put = pb.PutRequest(
            key=entry.key,
            value=_value(grant.owner, grant.acquired_at, value),
            lease=grant.lease.data,
        )
        try:
            reply = await self._txn(
                "set value",
                [_created_at(entry.key, grant.token)],
                [pb.RequestOp(request_put=put)],
            )
        except LeaseExpired:
            return False  # the lease, and so the entry, is gone
        return bool(reply.succeeded)

    # Inspection.

    async def holder(self, key: str) -> Holder | None:
        found = await self._queue(key, limit=1)
        return found[0] if found else None

    async def contenders(self, key: str) -> list[Holder]:
        return await self._queue(key, limit=0)

    async def _queue(self, key: str, limit: int) -> list[Holder]:
        prefix = self._prefix(key)
        reply = await self._range(
            "inspect",
            pb.RangeRequest(
                key=prefix,
                range_end=_prefix_end(prefix),
                sort_order=_ASCEND,
                sort_target=_CREATE,
                limit=limit,
            ),
        )
        found = [_holder(key, kv, first=i == 0) for i, kv in enumerate(reply.kvs)]
        if found:
            lease_id = reply.kvs[0].lease

            async def call(endpoint: _Endpoint, metadata: Metadata) -> Any:
                return await endpoint.lease.LeaseTimeToLive(
                    pb.LeaseTimeToLiveRequest(ID=lease_id),
                    timeout=self._request_timeout,
                    metadata=metadata,
                )

            ttl = (await self._call("inspect", call)).TTL
            first = found[0]
            found[0] = Holder(
                name=first.name,
                owner=first.owner,
                host=first.host,
                pid=first.pid,
                token=first.token,
                acquired_at=first.acquired_at,
                expires_in=float(max(ttl, 0)),
                value=first.value,
            )
        return found

    async def changes(self, key: str) -> AsyncIterator[None]:
        prefix = self._prefix(key)
        request = pb.WatchRequest(
            create_request=pb.WatchCreateRequest(key=prefix, range_end=_prefix_end(prefix))
        )
        announced = False
        while True:
            endpoint = self._endpoint()
            stream = endpoint.watch.Watch(iter([request]), metadata=await self._metadata(endpoint))
            try:
                async for reply in stream:
                    if reply.created and not announced:
                        announced = True
                        yield
                    elif reply.events or reply.canceled or reply.created:
                        yield  # (created again after a fail-over: we may have missed a change)
                    if reply.canceled:
                        break
            except grpc.RpcError as exc:
                if _connection_broken(exc):
                    await self._reset(endpoint)
                elif exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._fail_over(endpoint)
                else:
                    raise self._error(exc, endpoint.address, "observe") from exc
            finally:
                stream.cancel()
            await _compat.sleep(0.05)  # the stream ended: back-off before watching again


def _created_at(key: bytes, revision: int) -> Any:
    """The Txn condition: ``key`` exists with this create revision (0: ``key`` is absent)."""
    return pb.Compare(
        key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=revision
    )


def _prefix_end(prefix: bytes) -> bytes:
    """The end of the key range that starts with ``prefix`` (etcd's range_end convention)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _entry(grant: Grant) -> _Entry:
    entry = grant.data
    assert isinstance(entry, _Entry)
    return entry


def _value(owner: OwnerInfo, acquired_at: dt.datetime, value: str | None) -> bytes:
    return json.dumps(
        {
            "owner": owner.owner,
            "host": owner.host,
            "pid": owner.pid,
            "acquired_at": acquired_at.isoformat(),
            "value": value,
        }
    ).encode()


def _owner_of(value: bytes) -> str | None:
    try:
        owner = json.loads(value).get("owner")
    except (ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None


def _holder(key: str, kv: kv_pb2.KeyValue, first: bool) -> Holder:
    try:
        data = json.loads(kv.value)
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    acquired_at = data.get("acquired_at")
    return Holder(
        name=key.partition("/")[2],
        owner=str(data.get("owner", "")),
        host=str(data.get("host", "")),
        pid=int(data.get("pid", 0)),
        token=kv.create_revision if first else 0,
        acquired_at=dt.datetime.fromisoformat(acquired_at) if first and acquired_at else None,
        expires_in=None,
        value=data.get("value"),
    )


def _deadline_exceeded(exc: grpc.RpcError) -> bool:
    # etcd may answer with its own status when it sees our deadline pass first.
    code, details = exc.code(), exc.details() or ""
    return code == grpc.StatusCode.DEADLINE_EXCEEDED or "context deadline exceeded" in details


def _connection_broken(exc: grpc.RpcError) -> bool:
    """The connection is unusable though still open (e.g. frames lost: etcd resets streams)."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.CANCELLED:
        return "Channel closed" in details  # a call on a channel we retired
    return code == grpc.StatusCode.INTERNAL and (
        "RST_STREAM" in details or "Stream removed" in details
    )


def _token_expired(exc: grpc.RpcError) -> bool:
    details = exc.details() or ""
    return "invalid auth token" in details or "auth token is expired" in details


def _read_file(option: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {option} file {path!r}: {exc}") from exc
