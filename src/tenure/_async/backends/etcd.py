"""The ``etcd://`` / ``etcds://`` backend: etcd v3 over gRPC, as etcd's own concurrency Mutex.

Stubs are generated from etcd's protos (``tenure._etcdpb``, ``scripts/gen-etcd-protos.py``); the
same stubs serve ``grpc`` (sync) and ``grpc.aio`` (asyncio).

- **Session** = one etcd lease (``LeaseGrant``, TTL in whole seconds, rounded up). Renewal is one
  request on the member's long-lived ``LeaseKeepAlive`` stream (plus, when locks are held, one
  ``LeaseTimeToLive`` listing the lease's keys, sent alongside, so a deleted entry is noticed);
  etcd answers TTL 0 for a lease it no longer has.
- **Lock keys** are ``<ns>/<kind>/<name>//<lease-id-hex>`` (``//`` cannot occur in a name, so
  the prefix of ``a`` never covers the keys of ``a/b``), attached to the lease, with the owner's
  metadata (JSON) as the value. The queue is the keys under the prefix in create-revision order.
- **Acquire** is one ``Txn``: create my key if absent (else read it), and read the newest two
  keys (the second is my predecessor). If there is none before mine, the lock is held and the
  **fencing token is my key's create revision**. Otherwise I watch only my predecessor for a
  delete, then look again: a release wakes exactly one waiter. All waiters of a driver share
  one long-lived ``Watch`` stream per member (watch ids of our choosing route the replies). A
  waiter whose key vanished because its lease expired fails (``LockLostError``), never
  succeeds.
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
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

# tenure: begin sync-only
# import queue
# tenure: end sync-only
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
from .base import EXCLUSIVE, Grant, Lease, LeaseExpired, Mode

__all__ = ["EtcdDriver"]

T = TypeVar("T")
S = TypeVar("S", bound="_Stream")
Metadata = tuple[tuple[str, str], ...] | None

#: Keys whose constant acquire-Txn parts are kept built.
_OPS_CACHE = 1024
#: A queued waiter whose connection fails looks again after this long (seconds).
_RETRY_DELAY = 0.05
#: Retired channels kept open (their calls finish) before the oldest is closed.
_KEEP_RETIRED = 4
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


class _StreamError(grpc.RpcError):  # type: ignore[misc]  # grpc has no type hints
    """A long-lived stream's failure, as seen by a call waiting on it (see ``EtcdDriver._call``).

    ``broken``: the stream, not the server, is at fault (closed by us, or ended by the server
    without a status): the call is retried on a new connection.
    """

    def __init__(self, code: grpc.StatusCode, details: str, *, broken: bool = False) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self.broken = broken

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _stream_error(exc: grpc.RpcError) -> _StreamError:
    return _StreamError(exc.code(), exc.details() or "", broken=_connection_broken(exc))


class _Stream:
    """One long-lived bidirectional gRPC stream: callers queue requests, a worker reads replies.

    Subclasses route each reply to the callers waiting for it (``_on_reply``). When the stream
    ends (an error, the server closing it, or :meth:`close`), ``error`` is set, every waiting
    caller is failed with it (``_fail``), and the stream is never used again: the next caller
    opens a new one. ``metadata`` is what the stream was opened with (an auth token).
    """

    def __init__(self, endpoint: _Endpoint, metadata: Metadata) -> None:
        self.metadata = metadata
        self.error: _StreamError | None = None
        self._state = _compat.StateLock()
        self._requests: asyncio.Queue[Any] = asyncio.Queue()  # tenure: async-only
        # tenure: sync self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._call = self._open(endpoint, self._outgoing(), metadata)
        self._worker = _compat.spawn(self._read, f"tenure-etcd-{type(self).__name__}")

    async def _outgoing(self) -> AsyncIterator[Any]:
        while True:
            request = await self._requests.get()
            if request is None:
                return
            yield request

    def _send(self, request: Any) -> None:
        """Queue ``request`` (caller holds ``_state`` and has checked ``error``)."""
        self._requests.put_nowait(request)

    async def _read(self) -> None:
        error = _StreamError(grpc.StatusCode.UNAVAILABLE, "the stream ended", broken=True)
        try:
            async for reply in self._call:
                with self._state:
                    self._on_reply(reply)
        except grpc.RpcError as exc:
            error = _stream_error(exc)
        except asyncio.CancelledError:  # tenure: async-only
            pass  # tenure: async-only
        self._end(error)

    def _end(self, error: _StreamError) -> None:
        with self._state:
            if self.error is not None:
                return
            self.error = error
            self._requests.put_nowait(None)
            self._fail(error)
        self._call.cancel()

    async def close(self) -> None:
        self._end(_StreamError(grpc.StatusCode.CANCELLED, "the stream was closed", broken=True))
        await self._worker.join(1.0)

    def _open(self, endpoint: _Endpoint, requests: Any, metadata: Metadata) -> Any:
        raise NotImplementedError

    def _on_reply(self, reply: Any) -> None:
        raise NotImplementedError

    def _fail(self, error: _StreamError) -> None:
        raise NotImplementedError


class _Watch:
    """A waiter's watch on one key, as the waiter sees it."""

    __slots__ = ("created", "error", "fired", "id", "revision")

    def __init__(self, watch_id: int) -> None:
        self.id = watch_id
        self.revision = 0  # the revision the watch was created at
        self.created = _compat.Event()  # the watch is in place
        self.fired = _compat.Event()  # the key was deleted, the watch cancelled, or an error
        self.error: _StreamError | None = None

    def wake(self) -> None:
        """End the wait (an error, a cancellation, the session's end)."""
        self.created.set()
        self.fired.set()


class _Watches(_Stream):
    """A member's one Watch stream, shared by every waiter of the driver.

    A waiter's watch gets an id of our choosing (etcd >= 3.4 takes them), so every reply is
    routed without waiting for the creations before it; stopping a watch sends its cancel and
    forgets it without waiting for the reply.
    """

    def __init__(self, endpoint: _Endpoint, metadata: Metadata) -> None:
        self._next_id = 1
        self._watching: dict[int, _Watch] = {}
        super().__init__(endpoint, metadata)

    def _open(self, endpoint: _Endpoint, requests: Any, metadata: Metadata) -> Any:
        return endpoint.watch.Watch(requests, metadata=metadata)

    def start(self, key: bytes) -> _Watch:
        """Watch ``key`` for a delete, from the revision at which the watch is created."""
        with self._state:
            if self.error is not None:
                raise self.error
            watch = self._watching[self._next_id] = _Watch(self._next_id)
            self._next_id += 1
            self._send(
                pb.WatchRequest(
                    create_request=pb.WatchCreateRequest(
                        key=key, filters=[pb.WatchCreateRequest.NOPUT], watch_id=watch.id
                    )
                )
            )
            return watch

    def stop(self, watch: _Watch) -> None:
        with self._state:
            if self._watching.pop(watch.id, None) is not None and self.error is None:
                self._send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch.id)))

    def _on_reply(self, reply: Any) -> None:
        watch = self._watching.get(reply.watch_id)
        if watch is None:
            if reply.created and reply.canceled and reply.watch_id < 0:
                # etcd could not create a watch and did not say which: end the stream.
                self._end(_StreamError(grpc.StatusCode.UNKNOWN, reply.cancel_reason, broken=True))
            return  # a watch we stopped
        if reply.created:
            watch.revision = reply.header.revision
            watch.created.set()
        if reply.canceled:
            if reply.cancel_reason:
                watch.error = _cancelled(reply.cancel_reason)
            watch.wake()
        elif reply.events:
            watch.fired.set()

    def _fail(self, error: _StreamError) -> None:
        for watch in self._watching.values():
            watch.error = error
            watch.wake()
        self._watching.clear()


class _Renewal:
    """One keep-alive request awaiting its reply."""

    __slots__ = ("done", "error", "ttl")

    def __init__(self) -> None:
        self.done = _compat.Event()
        self.ttl = 0
        self.error: _StreamError | None = None


class _KeepAlives(_Stream):
    """A member's one LeaseKeepAlive stream, shared by every lease of the driver.

    etcd answers a stream's keep-alives in order, so a reply belongs to the oldest request for
    its lease still unanswered (one whose caller gave up stays queued until its reply comes).
    """

    def __init__(self, endpoint: _Endpoint, metadata: Metadata) -> None:
        self._waiting: dict[int, deque[_Renewal]] = {}
        super().__init__(endpoint, metadata)

    def _open(self, endpoint: _Endpoint, requests: Any, metadata: Metadata) -> Any:
        return endpoint.lease.LeaseKeepAlive(requests, metadata=metadata)

    def send(self, lease_id: int) -> _Renewal:
        with self._state:
            if self.error is not None:
                raise self.error
            renewal = _Renewal()
            self._waiting.setdefault(lease_id, deque()).append(renewal)
            self._send(pb.LeaseKeepAliveRequest(ID=lease_id))
            return renewal

    def _on_reply(self, reply: Any) -> None:
        waiting = self._waiting.get(reply.ID)
        if not waiting:
            return
        renewal = waiting.popleft()
        if not waiting:
            del self._waiting[reply.ID]
        renewal.ttl = reply.TTL
        renewal.done.set()

    def _fail(self, error: _StreamError) -> None:
        for waiting in self._waiting.values():
            for renewal in waiting:
                renewal.error = error
                renewal.done.set()
        self._waiting.clear()


class _Endpoint:
    """One member's channel, stubs and long-lived streams."""

    __slots__ = ("_state", "_streams", "address", "auth", "channel", "kv", "lease", "watch")

    def __init__(self, address: str, channel: Any) -> None:
        self.address = address
        self.channel = channel
        self.kv = pb_grpc.KVStub(channel)
        self.lease = pb_grpc.LeaseStub(channel)
        self.watch = pb_grpc.WatchStub(channel)
        self.auth = pb_grpc.AuthStub(channel)
        self._streams: dict[type[_Stream], _Stream] = {}
        self._state = _compat.StateLock()

    async def stream(self, kind: type[S], metadata: Metadata) -> S:
        """This member's stream of ``kind``: opened (again) if there is none, it ended, or it
        was opened with another token than the one now in use."""
        stale = None
        with self._state:
            stream = self._streams.get(kind)
            if stream is None or stream.error is not None or stream.metadata != metadata:
                stale, stream = stream, kind(self, metadata)
                self._streams[kind] = stream
        if stale is not None:
            await stale.close()
        assert isinstance(stream, kind)
        return stream

    async def close_streams(self) -> None:
        with self._state:
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            await stream.close()


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
        self._ops_cache: dict[bytes, tuple[Any, Any, Any]] = {}
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

        Its streams are closed at once (their callers retry on a new connection); its channel
        only after a few more resets, so that unary calls still running on it end on their own
        deadline rather than being cut off.
        """
        with self._state:
            if self._endpoints.get(endpoint.address) is not endpoint:
                return
            del self._endpoints[endpoint.address]
            self._retired.append(endpoint.channel)
            old = self._retired[:-_KEEP_RETIRED] if len(self._retired) > _KEEP_RETIRED else []
            del self._retired[: len(old)]
        # The shared streams end now: their callers retry on the new connection.
        await endpoint.close_streams()
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
            endpoints = list(self._endpoints.values())
            channels = [e.channel for e in endpoints] + self._retired
            self._endpoints, self._retired = {}, []
        for endpoint in endpoints:
            await endpoint.close_streams()
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
        """One keep-alive on the member's keep-alive stream; with locks held, one
        ``LeaseTimeToLive`` listing the lease's keys runs alongside it (a key deleted behind our
        back is reported gone). However many locks: one round trip, at most two requests."""

        async def call(endpoint: _Endpoint, metadata: Metadata) -> tuple[int, set[bytes] | None]:
            keep_alives = await endpoint.stream(_KeepAlives, metadata)
            renewal = keep_alives.send(lease.data)
            keys = None
            if grants:
                reply = await endpoint.lease.LeaseTimeToLive(
                    pb.LeaseTimeToLiveRequest(ID=lease.data, keys=True),
                    timeout=timeout,
                    metadata=metadata,
                )
                keys = set(reply.keys)
            if not await renewal.done.wait(timeout):
                raise _StreamError(grpc.StatusCode.DEADLINE_EXCEEDED, "no keep-alive reply")
            if renewal.error is not None:
                raise renewal.error
            return renewal.ttl, keys

        ttl, keys = await self._call("renew", call)
        if ttl <= 0:
            raise LeaseExpired(f"etcd has no lease {lease.id}")
        if keys is None:
            return []
        return [grant for grant in grants if _entry(grant).key not in keys]

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
        self, lease: Lease, key: str, owner: OwnerInfo, deadline: float | None, mode: Mode
    ) -> Grant | None:
        if mode != EXCLUSIVE:  # not yet: [rwlock]/[semaphore] bring the shared modes here
            raise ConfigurationError(f"{self.scheme}: {mode.name} mode is not supported yet")
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
        failing_since: float | None = None  # since when the connection has been failing us
        try:
            while True:
                if lease.ended:  # the session was lost or closed (a wait ends at once then)
                    raise LockLostError(
                        f"the session of etcd lease {lease.id} ended while waiting for {key!r}",
                        name=key.partition("/")[2],
                    )
                remaining = math.inf if deadline is None else deadline - _compat.monotonic()
                if remaining <= 0:
                    return None
                try:
                    if older is _UNKNOWN:
                        older = await self._predecessor(prefix, me, mine)
                    if older is _GONE:
                        # My key is gone: my lease expired (fail), or someone deleted it (queue
                        # again).
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
                    # Woken by the predecessor's delete, or the session's end (its lease
                    # expired: the keep-alive says so); at least every TTL, to notice my own
                    # key deleted behind my back.
                    assert isinstance(older, _Older)
                    await self._wait_for_delete(lease, older, me, mine, min(remaining, lease.ttl))
                    failing_since = None
                except (BackendUnavailableError, BackendTimeoutError):
                    # Queued, and the connection fails (a member restarting, a new leader, a
                    # broken connection): keep my entry, and so my place, and look again. Past
                    # one TTL of failures my lease is gone anyway: give up.
                    now = _compat.monotonic()
                    failing_since = now if failing_since is None else failing_since
                    if now - failing_since >= lease.ttl and not lease.ended:
                        raise
                    await _compat.sleep(min(_RETRY_DELAY, remaining))
                older = _UNKNOWN
        finally:
            # (An ended session's key goes with its lease: no round trip to a server that may be
            # out of reach.)
            if not done and not lease.ended:
                await asyncio.shield(self._leave_quietly(me, mine))  # tenure: async-only
                # tenure: sync self._leave_quietly(me, mine)

    def _lost_while_waiting(self, lease: Lease, key: str) -> LockLostError:
        reason = f"etcd lease {lease.id} expired while waiting for {key!r}"
        lease.expired(reason)
        return LockLostError(reason, name=key.partition("/")[2])

    async def _enqueue(
        self, prefix: bytes, me: bytes, lease: Lease, owner: OwnerInfo, value: bytes
    ) -> tuple[int, _Older | object | None]:
        """One Txn: create my key unless it exists, and read the newest two keys (mine and my
        predecessor; an existing key of mine is read with the oldest instead).

        Returns my create revision and my predecessor: None if I am first, ``_UNKNOWN`` if my
        key already existed (a retry; the caller looks it up).
        """
        absent, newest_two, read_me = self._enqueue_ops(prefix, me)
        put = pb.RequestOp(request_put=pb.PutRequest(key=me, value=value, lease=lease.data))
        for _ in range(3):
            reply = await self._txn("acquire", absent, [put, newest_two], read_me)
            if reply.succeeded:
                # My new key is the newest: the one before it, if any, is my predecessor.
                mine = reply.header.revision
                kvs = reply.responses[1].response_range.kvs
                if len(kvs) < 2:
                    return mine, None
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

    def _enqueue_ops(self, prefix: bytes, me: bytes) -> tuple[Any, Any, Any]:
        """The parts of the acquire Txn that never change for one key (built once, cached)."""
        ops = self._ops_cache.get(me)
        if ops is None:
            end = _prefix_end(prefix)
            oldest = pb.RequestOp(
                request_range=pb.RangeRequest(key=prefix, range_end=end, sort_order=_ASCEND,
                                              sort_target=_CREATE, limit=1, keys_only=True)
            )  # fmt: skip
            newest_two = pb.RequestOp(
                request_range=pb.RangeRequest(key=prefix, range_end=end, sort_order=_DESCEND,
                                              sort_target=_CREATE, limit=2, keys_only=True)
            )  # fmt: skip
            read_me = [pb.RequestOp(request_range=pb.RangeRequest(key=me)), oldest]
            ops = ([_created_at(me, 0)], newest_two, read_me)
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

    async def _wait_for_delete(
        self, lease: Lease, older: _Older, me: bytes, mine: int, timeout: float
    ) -> None:
        """Return once ``older`` may be gone, ``lease`` ended, or at ``timeout``.

        One watch, on ``older`` only, on the member's shared watch stream, from the server's
        current revision (a watch from an older revision is served by etcd's catch-up loop, up
        to 100 ms late). If anything was written since ``older`` was read, one Txn checks that
        it (and my own key) is still there before waiting. My own key is not watched: it goes
        when my lease does, which the session learns from its keep-alive and ends the wait
        with (``wake_on_end``); a key deleted by hand is noticed at the next look.
        """
        until = _compat.monotonic() + timeout
        both_there = pb.TxnRequest(
            compare=[_created_at(older.key, older.revision), _created_at(me, mine)]
        )

        async def call(endpoint: _Endpoint, metadata: Metadata) -> None:
            watches = await endpoint.stream(_Watches, metadata)
            watch = watches.start(older.key)
            call_soon = _compat.thread_safe_caller()
            forget = lease.wake_on_end(lambda: call_soon(watch.wake))
            try:
                created_by = min(until, _compat.monotonic() + self._request_timeout)
                if not await watch.created.wait(created_by - _compat.monotonic()):
                    if created_by < until:
                        raise _StreamError(grpc.StatusCode.DEADLINE_EXCEEDED, "no watch created")
                    return
                if watch.error is None and not watch.fired.is_set():
                    if watch.revision > older.read_at:
                        check = await endpoint.kv.Txn(
                            both_there, timeout=self._request_timeout, metadata=metadata
                        )
                        if not check.succeeded:
                            return
                    await watch.fired.wait(until - _compat.monotonic())
                if watch.error is not None:
                    raise watch.error
            finally:
                forget()
                watches.stop(watch)

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
    if isinstance(exc, _StreamError) and exc.broken:
        return True
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.CANCELLED:
        return "Channel closed" in details  # a call on a channel we retired
    return code == grpc.StatusCode.INTERNAL and (
        "RST_STREAM" in details or "Stream removed" in details
    )


def _cancelled(reason: str) -> _StreamError:
    """The error of a watch etcd cancelled with a reason (a permission, an expired token)."""
    code = grpc.StatusCode.UNKNOWN
    if "permission denied" in reason:
        code = grpc.StatusCode.PERMISSION_DENIED
    return _StreamError(code, reason)


def _token_expired(exc: grpc.RpcError) -> bool:
    details = exc.details() or ""
    return "invalid auth token" in details or "auth token is expired" in details


def _read_file(option: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {option} file {path!r}: {exc}") from exc
