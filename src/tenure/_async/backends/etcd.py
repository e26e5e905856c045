"""The ``etcd://`` / ``etcds://`` backend: etcd v3 over gRPC, as etcd's own concurrency Mutex.

Stubs are generated from etcd's protos (``tenure._etcdpb``, ``scripts/gen-etcd-protos.py``); the
same stubs serve ``grpc`` (sync) and ``grpc.aio`` (asyncio).

- **Session** = one etcd lease (``LeaseGrant``, TTL in whole seconds, rounded up). Renewal is one
  request on the member's long-lived ``LeaseKeepAlive`` stream (plus, when locks are held, one
  ``LeaseTimeToLive`` listing the lease's keys, sent alongside, so a deleted entry is noticed);
  etcd answers TTL 0 for a lease it no longer has.
- **Keys.** A contender is one key under ``<ns>/<kind>/<name>//``, attached to its session's
  lease, with the owner's metadata (JSON) as the value (``//`` cannot occur in a name, so the
  prefix of ``a`` never covers the keys of ``a/b``). Plain locks and elections keep Go's Mutex
  layout, ``<prefix><lease-id-hex>`` (one per session: the core coalesces them), so that
  ``etcdctl lock`` contends with them. A rwlock's or a semaphore's key is
  ``<prefix><mode>/<lease-id-hex>/<owner-id>`` with mode ``write``, ``read`` or ``permit`` (a
  session may hold several readers or permits; ``read``/``write`` is the split of etcd's recipes
  RWMutex), and a semaphore's key records its limit in the value. The queue is the keys under
  the prefix in create-revision order; the **fencing token is my key's create revision** (etcd's
  one revision counter: strictly increasing across every mode).
- **Elections keep the candidate's value as is** in their key (``etcdctl elect`` and Go's
  ``Election`` read it there); the owner's metadata goes in a second key on the same lease,
  ``<ns>/meta/election/<name>//<lease-id-hex>`` (``_meta_key``: outside the prefix, where Go does
  not look), written, rewritten (``proclaim``) and deleted in the same ``Txn`` as the key.
- **Other clients' keys** under a prefix are contenders like ours, ordered by create revision:
  ``etcdctl lock <ns>/lock/<name>/`` and ``etcdctl elect <ns>/election/<name>/`` (Go's
  ``concurrency`` package) queue with tenure's locks and elections both ways. Inspection shows
  a key without tenure's metadata as owner ``go`` (Go's ``<prefix><lease-hex>``) or ``unknown``.
- **The grant rule** (``base.grantable``) is a range read or three (``_ranges``): I hold the
  key when fewer than ``window`` keys of each range are older than mine. A lock, an election, a
  writer: 1 of all the keys; a reader: 1 of every key but the readers' (the writers', and any
  key of another layout: exclusive on the safe side); a permit: the same but the permits', and
  ``limit`` of all the keys.
- **Acquire** is one ``Txn``: create my key if absent (else read it), read the newest keys of
  each range (older than my new key) and, for a semaphore, the oldest permit, whose limit it
  must share (else its key is deleted and ``limit_mismatch`` raised). Held: done. Else I watch,
  then look again (a ``Txn`` guarded by my key) until I hold it:

  - a lock, an election, a writer watch the newest older key's delete (Go's Mutex); a reader
    the newest older writer's (the recipes RWMutex; or another exclusive key's). So a writer's
    release wakes exactly the run of readers behind it, and any other release at most the one
    contender behind it.
  - one permit is a lock. With more, a permit may be granted by the release of *any* older
    holder, so one predecessor is not enough, and every waiter watching all of them is a herd.
    The first waiter (exactly ``limit`` older keys: holders) watches the deletes of the whole
    queue, firing only for keys older than its own (``prev_kv``, filtered on the stream). Every
    later waiter watches its predecessor for any change; a waiter that is granted touches its
    key (a put that changes nothing) so its successor looks again and becomes the first
    waiter. One release wakes one waiter; a grant costs the same few requests however many
    wait.

  All waiters of a driver share one long-lived ``Watch`` stream per member (watch ids of our
  choosing route the replies). A waiter whose key vanished because its lease expired fails
  (``LockLostError``), never succeeds.
- **Release** deletes my key only if its create revision is still my token, so a retried
  release after a lost reply finds nothing (the core counts that as released) and cannot delete
  a newer entry. Try-once, a passed deadline and cancellation delete my key at once.

Several endpoints fail over to the next on ``UNAVAILABLE``; every call has a deadline
(``request_timeout``); user/password authentication sends the token as metadata and gets a new
one when etcd says it is invalid. gRPC errors are translated in :meth:`EtcdDriver._call` only.
"""

from __future__ import annotations

import asyncio  # tenure: async-only
import contextlib
import dataclasses
import datetime as dt
import enum
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
from .base import (
    EXCLUSIVE,
    KINDS,
    SHARED,
    Grant,
    Lease,
    LeaseExpired,
    Mode,
    grantable,
    hold_left,
    limit_mismatch,
    permit,
)

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


#: The first path segment of a rwlock's or a semaphore's key, by mode (plain locks and elections
#: keep Go's Mutex layout, ``<prefix><lease-hex>``, so that ``etcdctl lock`` still interoperates).
_TAGS = {"exclusive": b"write", "shared": b"read", "permit": b"permit"}
_MODES = {tag: name for name, tag in _TAGS.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class _Range:
    """Keys ``start`` to ``end`` of which fewer than ``window`` may be older than mine."""

    start: bytes
    end: bytes
    window: int


@dataclasses.dataclass(frozen=True, slots=True)
class _Queue:
    """My key (``me``) in the queue of all keys under ``prefix``, and the rule that grants it.

    The grant rule (``base.grantable``) as etcd ranges: I hold the key when, in each of the
    ``ranges``, fewer than its ``window`` keys are older than mine. A plain lock, an election or
    a writer: 1 over the whole queue; a reader: 1 over every key but the readers' (writers, and
    on the safe side any key of another layout); a permit: 1 over every key but the permits',
    and ``limit`` over the whole queue (see ``_ranges``).
    """

    prefix: bytes
    me: bytes
    mode: Mode
    ranges: tuple[_Range, ...]
    meta: bytes = b""  # an election candidate's metadata key (``EtcdDriver._meta_key``)


class _Place(enum.Enum):
    """Where my key stands when there is nothing to wait for."""

    OWNER = "owner"  # fewer than ``window`` blocking keys are older: I hold it
    GONE = "gone"  # my key is gone: my lease expired, or someone deleted it
    UNKNOWN = "unknown"  # not looked at yet (a retried acquire found my key): look


@dataclasses.dataclass(frozen=True, slots=True)
class _Wait:
    """What I wait for, as a look found it: the delete of ``key``, or of any key older than mine
    in ``key`` to ``range_end`` (a semaphore's first waiter); with ``puts``, any change of
    ``key`` (a permit waiter's predecessor touches its key once granted). Two looks that find
    the same wait (``read_at`` and ``last`` aside) saw nothing change that matters.

    ``last``: ``key`` is the only key older than mine in the one range that decides (a lock, an
    election, a writer, one permit), so its delete leaves none: no key is ever created older
    than one that exists, and the set of older keys only shrinks. Its delete grants me without
    a look."""

    key: bytes
    range_end: bytes = b""
    puts: bool = False
    mod_revision: int = 0
    read_at: int = dataclasses.field(default=0, compare=False)
    last: bool = dataclasses.field(default=False, compare=False)


class _KeptHold(Exception):
    """My key's name is taken by this session's earlier holder, kept under ``min_hold``."""

    def __init__(self, revision: int) -> None:
        super().__init__(revision)
        self.revision = revision


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
    """A waiter's watch, as the waiter sees it; ``older_than``: only the deletes of keys created
    before this revision fire it (0: any event). ``happened``: an event fired it (not an error,
    a cancellation or the session's end)."""

    __slots__ = ("created", "error", "fired", "happened", "id", "older_than", "revision")

    def __init__(self, watch_id: int, older_than: int) -> None:
        self.id = watch_id
        self.older_than = older_than
        self.revision = 0  # the revision the watch was created at
        self.created = _compat.Event()  # the watch is in place
        self.fired = _compat.Event()  # the event came, the watch was cancelled, or an error
        self.happened = False
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

    def start(self, wait: _Wait, older_than: int) -> _Watch:
        """Watch what ``wait`` says, from the revision at which the watch is created; a range's
        deletes fire it only for keys created before ``older_than``."""
        with self._state:
            if self.error is not None:
                raise self.error
            ranged = bool(wait.range_end)
            watch = self._watching[self._next_id] = _Watch(
                self._next_id, older_than if ranged else 0
            )
            self._next_id += 1
            create = pb.WatchCreateRequest(
                key=wait.key,
                range_end=wait.range_end,
                filters=[] if wait.puts else [pb.WatchCreateRequest.NOPUT],
                prev_kv=ranged,  # a delete's previous value says when that key was created
                watch_id=watch.id,
            )
            self._send(pb.WatchRequest(create_request=create))
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
        elif reply.events and (
            not watch.older_than
            # (A delete whose previous value etcd no longer has reads as created at 0: it fires.)
            or any(e.prev_kv.create_revision < watch.older_than for e in reply.events)
        ):
            watch.happened = True
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
        wakeup="watch on the newest older (writer's) key; a permit's first waiter on the holders"
        " (one waiter, or one run of readers, woken per release)",
        min_hold=True,  # the released key moves to a lease of its own
        hold_slack=2.0,  # that lease's whole seconds (rounded up) + the lessor's 500 ms checks
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
        self._ops_cache: dict[tuple[bytes, Mode], tuple[Any, ...]] = {}
        # Entries of ours that may still be queued with nobody waiting on them (a clean-up that
        # failed, or an enqueue whose reply was lost), each with the Txn condition that is true
        # only of that entry: the next renewal deletes them, and a later enqueue of the same key
        # replaces such an entry instead of taking it for its own. Changed under ``_state``:
        # several sessions' renewals (each its own keep-alive) and acquires share it.
        self._leftovers: dict[bytes, list[Any]] = {}
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

    def _key(self, key: str, lease: Lease, owner: str, mode: Mode) -> bytes:
        """A contender's key: Go's Mutex layout for plain locks and elections (one per session:
        the core coalesces them); a rwlock's or a semaphore's carries its mode and owner id (a
        session may hold several permits or readers of one name)."""
        if key.startswith(("lock/", "election/")):
            return self._prefix(key) + lease.id.encode()
        return self._prefix(key) + b"%s/%s/%s" % (
            _TAGS[mode.name],
            lease.id.encode(),
            owner.encode(),
        )

    def _key_of(self, grant: Grant) -> bytes:
        return self._key(grant.key, grant.lease, grant.owner.owner, grant.mode)

    def _meta_key(self, me: bytes) -> bytes:
        """An election candidate's metadata key, ``<ns>/meta/election/<name>//<lease-hex>``
        (b"" for other keys): outside the election's prefix, where Go's Election does not look,
        so the candidate's key keeps its value as is. Same lease, written and deleted with it."""
        root = f"{self._namespace}/".encode()
        if not me.startswith(root + b"election/"):
            return b""
        return root + b"meta/" + me[len(root) :]

    def _queue(self, key: str, lease: Lease, owner: str, mode: Mode) -> _Queue:
        prefix = self._prefix(key)
        me = self._key(key, lease, owner, mode)
        return _Queue(prefix, me, mode, _ranges(prefix, mode), self._meta_key(me))

    def _puts(
        self, q: _Queue, lease: Lease, owner: OwnerInfo, at: dt.datetime, value: str | None
    ) -> list[Any]:
        """The puts that write my entry: my key with the owner's metadata (JSON), or for an
        election my key with the candidate's value as is and the metadata in its meta key."""
        number = _lease_number(lease)
        meta = _value(owner, at, value, q.mode.limit)
        if not q.meta:
            return [pb.RequestOp(request_put=pb.PutRequest(key=q.me, value=meta, lease=number))]
        plain = (value or "").encode()
        return [
            pb.RequestOp(request_put=pb.PutRequest(key=q.me, value=plain, lease=number)),
            pb.RequestOp(request_put=pb.PutRequest(key=q.meta, value=meta, lease=number)),
        ]

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
        self._endpoints, self._retired, self._leftovers = {}, [], {}
        self._state = _compat.StateLock()

    # Leases.

    async def grant_lease(self, ttl: float) -> Lease:
        seconds = max(1, math.ceil(ttl))

        async def call(endpoint: _Endpoint, metadata: Metadata) -> Any:
            return await endpoint.lease.LeaseGrant(
                pb.LeaseGrantRequest(TTL=seconds), timeout=self._request_timeout, metadata=metadata
            )

        reply = await self._call("grant lease", call)
        lease = Lease(id=f"{reply.ID:016x}", ttl=ttl)  # (its number: _lease_number)
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
        number = _lease_number(lease)

        async def call(endpoint: _Endpoint, metadata: Metadata) -> tuple[int, set[bytes] | None]:
            keep_alives = await endpoint.stream(_KeepAlives, metadata)
            renewal = keep_alives.send(number)
            keys = None
            if grants:
                reply = await endpoint.lease.LeaseTimeToLive(
                    pb.LeaseTimeToLiveRequest(ID=number, keys=True),
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
        if self._leftovers:
            await self._delete_leftovers()
        if keys is None:
            return []
        return [grant for grant in grants if self._key_of(grant) not in keys]

    async def revoke_lease(self, lease: Lease) -> None:
        async def call(endpoint: _Endpoint, metadata: Metadata) -> Any:
            return await endpoint.lease.LeaseRevoke(
                pb.LeaseRevokeRequest(ID=_lease_number(lease)),
                timeout=self._request_timeout,
                metadata=metadata,
            )

        with contextlib.suppress(LeaseExpired):  # already gone
            await self._call("revoke lease", call)

    # Contenders.

    async def acquire(
        self, lease: Lease, key: str, owner: OwnerInfo, deadline: float | None, mode: Mode
    ) -> Grant | None:
        q = self._queue(key, lease, owner.owner, mode)
        acquired_at = utcnow()
        puts = self._puts(q, lease, owner, acquired_at, owner.value)
        try_once = deadline is not None and deadline <= _compat.monotonic()
        while True:
            try:
                mine, place = await self._enqueue(q, key, owner, puts)
                break
            except LeaseExpired as exc:
                raise self._lost_while_waiting(lease, key) from exc
            # tenure: begin async-only
            except asyncio.CancelledError:
                # Cancelled while the request may have been on its way: delete what it may
                # have made now rather than at the next renewal.
                await asyncio.shield(self._delete_leftovers(q.me))
                raise
            # tenure: end async-only
            except _KeptHold as kept:
                # This session's own key name is taken by its earlier holder, released under
                # min_hold: wait for etcd to delete it (nothing of ours to leave behind).
                remaining = math.inf if deadline is None else deadline - _compat.monotonic()
                if try_once or remaining <= 0:
                    return None
                wait = _Wait(q.me, read_at=kept.revision + (1 << 62))  # no look: just the delete
                await self._wait(lease, q, kept.revision, wait, min(remaining, lease.ttl))
        if place is _Place.OWNER:
            return Grant(key, owner, mine, lease, acquired_at, mode=mode)
        if try_once:
            await self._leave_quietly(q.me, mine)
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
                    if place is _Place.UNKNOWN:
                        place = await self._look(q, mine)
                    if place is _Place.GONE:
                        # My key is gone: my lease expired (fail), or someone deleted it (queue
                        # again).
                        if not await self._lease_alive(lease):
                            raise self._lost_while_waiting(lease, key)
                        try:
                            mine, place = await self._enqueue(q, key, owner, puts)
                        except LeaseExpired as exc:
                            raise self._lost_while_waiting(lease, key) from exc
                        continue
                    if place is _Place.OWNER:
                        # A permit granted after a wait wakes the waiter that watches it.
                        if q.mode.limit > 1 and not await self._touch(q.me, mine):
                            place = _Place.GONE
                            continue
                        done = True
                        return Grant(key, owner, mine, lease, acquired_at, mode=mode)
                    # Woken by what I wait for, or the session's end (its lease expired: the
                    # keep-alive says so); at least every TTL, to notice my own key deleted
                    # behind my back.
                    assert isinstance(place, _Wait)  # (a look is never UNKNOWN)
                    gone = await self._wait(lease, q, mine, place, min(remaining, lease.ttl))
                    failing_since = None
                    if gone and place.last and not lease.ended:
                        # The only key older than mine was deleted: none is left, so I hold
                        # it, without the look Go's Mutex makes here. (My key goes only with
                        # my lease, which has not ended; one deleted by hand is reported lost
                        # at the next renewal, as a holder's is.)
                        done = True
                        return Grant(key, owner, mine, lease, acquired_at, mode=mode)
                except (BackendUnavailableError, BackendTimeoutError):
                    # Queued, and the connection fails (a member restarting, a new leader, a
                    # broken connection): keep my entry, and so my place, and look again. Past
                    # one TTL of failures my lease is gone anyway: give up.
                    now = _compat.monotonic()
                    failing_since = now if failing_since is None else failing_since
                    if now - failing_since >= lease.ttl and not lease.ended:
                        raise
                    await _compat.sleep(min(_RETRY_DELAY, remaining))
                place = _Place.UNKNOWN
        finally:
            # (An ended session's key goes with its lease: no round trip to a server that may be
            # out of reach.)
            if not done and not lease.ended:
                await asyncio.shield(self._leave_quietly(q.me, mine))  # tenure: async-only
                # tenure: sync self._leave_quietly(q.me, mine)

    def _lost_while_waiting(self, lease: Lease, key: str) -> LockLostError:
        reason = f"etcd lease {lease.id} expired while waiting for {key!r}"
        lease.expired(reason)
        return LockLostError(reason, name=key.partition("/")[2])

    async def _enqueue(
        self, q: _Queue, key: str, owner: OwnerInfo, puts: list[Any]
    ) -> tuple[int, _Place | _Wait]:
        """One Txn: create my key unless it exists (else read it, and the key holding its owner
        id: itself, or an election's meta key), read the newest keys of each range (all older
        than my new key) and, for a semaphore, the oldest permit (its stored limit).

        Returns my create revision and where I stand (``UNKNOWN`` if my key already existed: a
        retry; the caller looks).
        """
        reads = self._enqueue_ops(q)  # the newest of each range, and for a semaphore the oldest
        oldest = reads[len(q.ranges) :]
        read_me = [pb.RequestOp(request_range=pb.RangeRequest(key=q.me))]
        if q.meta:
            read_me.append(pb.RequestOp(request_range=pb.RangeRequest(key=q.meta)))
        # Entries left under my key by earlier attempts of this session (the renewal may be
        # deleting one of them right now): from here on mine to replace or rewrite.
        with self._state:
            stale = list(self._leftovers.pop(q.me, []))
        mine = 0
        try:
            for _ in range(3):
                reply = await self._txn(
                    "acquire", [_created_at(q.me, 0)], [*puts, *reads], [*read_me, *oldest]
                )
                if reply.succeeded:
                    mine = reply.header.revision
                    newest = reply.responses[len(puts) : len(puts) + len(q.ranges)]
                    place = _place(q, mine, [r.response_range for r in newest], mine)
                else:
                    kv = reply.responses[0].response_range.kvs[0]
                    mine, place = kv.create_revision, _Place.UNKNOWN
                    owned = reply.responses[len(read_me) - 1].response_range.kvs
                    if _json(kv.value).get("ended") is True:
                        self._remember(q.me, *stale)
                        raise _KeptHold(mine)
                    if not owned or _owner_of(owned[0].value) != owner.owner:
                        # A stale entry of this session (an earlier contender whose clean-up
                        # failed): replace it, so nothing that still knows it touches ours.
                        await self._delete_if(q.me, mine)
                        stale, mine = [], 0
                        continue
                    if stale:
                        # My own entry, from an attempt of this acquire whose reply was lost:
                        # the renewal may be deleting it by that attempt's value. Write this
                        # attempt's value over it (it keeps its place) before taking it.
                        kept = await self._txn("acquire", [_created_at(q.me, mine)], puts)
                        stale = []
                        if not kept.succeeded:
                            mine = 0
                            continue
                oldest_kvs = reply.responses[-1].response_range.kvs if q.mode.limit else []
                stored = _limit_of(oldest_kvs[0].value) if oldest_kvs else 0
                if stored and stored != q.mode.limit:
                    await self._leave_quietly(q.me, mine)  # nothing left behind
                    raise limit_mismatch(key.partition("/")[2], stored, q.mode.limit)
                return mine, place
        except _KeptHold:
            raise
        except BaseException:
            # A reply is lost (or the call cancelled while it was on its way), not necessarily
            # its write: an entry made by this attempt would stay queued with nobody waiting on
            # it (a lock's would hold the lock, for nobody, as long as the session lives). Its
            # value (this call's acquired_at) is written by nothing else: the next renewal (or
            # the cancelled acquire, at once) deletes it by that value, or by its revision.
            known = [_created_at(q.me, mine)] if mine else []
            self._remember(q.me, *stale, _written_by(puts), *known)
            raise
        raise BackendError(f"etcd: could not replace a stale entry {q.me!r}")

    def _enqueue_ops(self, q: _Queue) -> tuple[Any, ...]:
        """The acquire Txn's reads, the same for every contender of one key and mode (cached):
        the newest ``window + 1`` keys of each range (mine among them), and for a semaphore the
        oldest permit (its stored limit); a lock pays for no read it does not need."""
        ops = self._ops_cache.get((q.prefix, q.mode))
        if ops is None:
            ops = tuple(
                pb.RequestOp(
                    request_range=pb.RangeRequest(key=r.start, range_end=r.end, sort_order=_DESCEND,
                                                  sort_target=_CREATE, limit=r.window + 1,
                                                  keys_only=True)
                )
                for r in q.ranges
            )  # fmt: skip
            if q.mode.limit:
                permits = q.prefix + _TAGS["permit"] + b"/"
                ops += (pb.RequestOp(
                    request_range=pb.RangeRequest(key=permits, range_end=_prefix_end(permits),
                                                  sort_order=_ASCEND, sort_target=_CREATE, limit=1)
                ),)  # fmt: skip
            if len(self._ops_cache) >= _OPS_CACHE:
                self._ops_cache.clear()
            self._ops_cache[q.prefix, q.mode] = ops
        return ops

    def _look_request(self, q: _Queue, mine: int) -> Any:
        """The Txn that says where my key stands: if it is still mine, the newest ``window``
        keys of each range older than it (Go's ``waitDeletes`` reads the newest one)."""
        newest_older = [
            pb.RangeRequest(
                key=r.start,
                range_end=r.end,
                sort_order=_DESCEND,
                sort_target=_CREATE,
                max_create_revision=mine - 1,
                limit=r.window,
                keys_only=True,
            )
            for r in q.ranges
        ]
        return pb.TxnRequest(
            compare=[_created_at(q.me, mine)],
            success=[pb.RequestOp(request_range=r) for r in newest_older],
        )

    async def _look(self, q: _Queue, mine: int) -> _Place | _Wait:
        request = self._look_request(q, mine)

        async def call(endpoint: _Endpoint, metadata: Metadata) -> Any:
            return await endpoint.kv.Txn(request, timeout=self._request_timeout, metadata=metadata)

        return _looked(q, mine, await self._call("wait", call))

    async def _wait(self, lease: Lease, q: _Queue, mine: int, wait: _Wait, timeout: float) -> bool:
        """Return once what ``wait`` names may have happened, ``lease`` ended, or at ``timeout``:
        True if the watch saw it happen (``wait.key`` deleted, or changed), else False.

        One watch on the member's shared watch stream, from the server's current revision (a
        watch from an older revision is served by etcd's catch-up loop, up to 100 ms late). If
        anything was written since the look, one more look checks that it still finds the same
        wait before waiting. My own key is not watched: it goes when my lease does, which the
        session learns from its keep-alive and ends the wait with (``wake_on_end``); a key
        deleted by hand is noticed at the next look, or (granted without one: ``_Wait.last``)
        at the next renewal, as a holder's.
        """
        until = _compat.monotonic() + timeout
        look = self._look_request(q, mine)

        async def call(endpoint: _Endpoint, metadata: Metadata) -> bool:
            watches = await endpoint.stream(_Watches, metadata)
            watch = watches.start(wait, older_than=mine)
            call_soon = _compat.thread_safe_caller()
            forget = lease.wake_on_end(lambda: call_soon(watch.wake))
            try:
                created_by = min(until, _compat.monotonic() + self._request_timeout)
                if not await watch.created.wait(created_by - _compat.monotonic()):
                    if created_by < until:
                        raise _StreamError(grpc.StatusCode.DEADLINE_EXCEEDED, "no watch created")
                    return False
                if watch.error is None and not watch.fired.is_set():
                    if watch.revision > wait.read_at:
                        again = await endpoint.kv.Txn(
                            look, timeout=self._request_timeout, metadata=metadata
                        )
                        if _looked(q, mine, again) != wait:
                            return False
                    await watch.fired.wait(until - _compat.monotonic())
                if watch.error is not None:
                    raise watch.error
                return watch.happened
            finally:
                forget()
                watches.stop(watch)

        return await self._call("wait", call)

    async def _touch(self, me: bytes, mine: int) -> bool:
        """Write my key again, unchanged (a put event for the waiter that watches it); False if
        it is gone."""
        touch = pb.PutRequest(key=me, ignore_value=True, ignore_lease=True)
        reply = await self._txn(
            "acquire", [_created_at(me, mine)], [pb.RequestOp(request_put=touch)]
        )
        return bool(reply.succeeded)

    async def _lease_alive(self, lease: Lease) -> bool:
        async def call(endpoint: _Endpoint, metadata: Metadata) -> Any:
            return await endpoint.lease.LeaseTimeToLive(
                pb.LeaseTimeToLiveRequest(ID=_lease_number(lease)),
                timeout=self._request_timeout,
                metadata=metadata,
            )

        reply = await self._call("lease", call)
        return bool(reply.TTL > 0)

    async def _delete_if(self, me: bytes, revision: int) -> bool:
        """Delete my key (and an election's meta key) if its create revision is ``revision``."""
        return await self._delete_when(me, _created_at(me, revision))

    async def _delete_when(self, me: bytes, condition: Any) -> bool:
        """Delete my key (and an election's meta key) if ``condition`` holds."""
        deletes = [pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=me))]
        meta = self._meta_key(me)
        if meta:
            deletes.append(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=meta)))
        reply = await self._txn("release", [condition], deletes)
        return bool(reply.succeeded)

    async def _leave_quietly(self, me: bytes, revision: int) -> None:
        try:
            await self._delete_if(me, revision)
        except LeaseExpired:
            pass  # the key went with the lease
        except BackendError:
            # Else it would stay in the queue as long as its session lives (a reader's or a
            # permit's key is never reused): a later renewal deletes it.
            self._remember(me, _created_at(me, revision))

    def _remember(self, me: bytes, *conditions: Any) -> None:
        """Leave entries under ``me`` (each true of one entry) to the next renewal."""
        if conditions:
            with self._state:
                self._leftovers.setdefault(me, []).extend(conditions)

    async def _delete_leftovers(self, only: bytes | None = None) -> None:
        """Delete the entries left to a renewal (``only``: those under that key). Two of these
        may run at once (two sessions' renewals, or a renewal and a cancelled acquire): each
        deletes by a condition true of one entry only, so deleting twice is harmless, and
        whichever finishes first forgets the condition."""
        with self._state:
            work = [(me, list(c)) for me, c in self._leftovers.items() if only in (None, me)]
        for me, conditions in work:
            for condition in conditions:
                with contextlib.suppress(BackendError, LeaseExpired):
                    await self._delete_when(me, condition)  # (False: that entry is gone)
                    with self._state:
                        left = self._leftovers.get(me, [])
                        if condition in left:
                            left.remove(condition)
                        if not left:
                            self._leftovers.pop(me, None)

    async def release(self, grant: Grant) -> bool:
        # Only my key, and only while its create revision is still my token: a retry after a
        # lost reply finds nothing (the core counts that as released) and deletes nobody else's.
        hold = hold_left(grant)
        if hold:
            return await self._keep(grant, hold)
        return await self._delete_if(self._key_of(grant), grant.token)

    async def _keep(self, grant: Grant, hold: float) -> bool:
        """``min_hold``: instead of deleting my key, move it, marked ended, to a lease of its own
        that etcd expires at the end of the hold (whole seconds, rounded up; at least the
        server's minimum lease TTL). A put keeps the key's create revision, so its place in the
        queue and its token: nobody is granted until etcd deletes it, then the waiter that
        watches it is woken as by a release. Owner-checked as a release is."""
        seconds = max(1, math.ceil(hold))

        async def call(endpoint: _Endpoint, metadata: Metadata) -> Any:
            return await endpoint.lease.LeaseGrant(
                pb.LeaseGrantRequest(TTL=seconds), timeout=self._request_timeout, metadata=metadata
            )

        number = int((await self._call("release", call)).ID)
        me = self._key_of(grant)
        data = _json(_value(grant.owner, grant.acquired_at, grant.owner.value, grant.mode.limit))
        data["ended"] = True
        put = pb.PutRequest(key=me, value=json.dumps(data).encode(), lease=number)
        reply = await self._txn(
            "release", [_created_at(me, grant.token)], [pb.RequestOp(request_put=put)]
        )
        if not reply.succeeded:
            await self.revoke_lease(Lease(id=f"{number:016x}", ttl=seconds))
        return bool(reply.succeeded)

    async def check(self, grant: Grant) -> bool:
        reply = await self._range("check", pb.RangeRequest(key=self._key_of(grant), keys_only=True))
        return bool(reply.kvs) and reply.kvs[0].create_revision == grant.token

    async def set_value(self, grant: Grant, value: str) -> bool:
        q = self._queue(grant.key, grant.lease, grant.owner.owner, grant.mode)
        puts = self._puts(q, grant.lease, grant.owner, grant.acquired_at, value)
        try:
            reply = await self._txn("set value", [_created_at(q.me, grant.token)], puts)
        except LeaseExpired:
            return False  # the lease, and so the entry, is gone
        return bool(reply.succeeded)

    # Inspection.

    async def holder(self, key: str) -> Holder | None:
        found = await self._inspect(key, limit=1)  # the oldest key always holds
        return found[0] if found else None

    async def contenders(self, key: str) -> list[Holder]:
        return await self._inspect(key, limit=0)

    async def _inspect(self, key: str, limit: int) -> list[Holder]:
        """The keys in create order, and each holder's ``expires_in`` (its lease's TTL: one
        request per holders' lease)."""
        prefix = self._prefix(key)
        queue = pb.RangeRequest(
            key=prefix, range_end=_prefix_end(prefix), sort_order=_ASCEND, sort_target=_CREATE,
            limit=limit,
        )  # fmt: skip
        meta = self._meta_key(prefix)
        if meta:  # an election: its candidates' metadata too, at the same revision
            metas = pb.RangeRequest(key=meta, range_end=_prefix_end(meta))
            reply = await self._txn(
                "inspect", [], [pb.RequestOp(request_range=r) for r in (queue, metas)]
            )
            kvs = reply.responses[0].response_range.kvs
            owners = {kv.lease: _json(kv.value) for kv in reply.responses[1].response_range.kvs}
        else:
            kvs, owners = (await self._range("inspect", queue)).kvs, None
        found = _holders(key, prefix, kvs, owners)
        ttls: dict[int, float] = {}
        for i, kv in enumerate(kvs):
            if found[i].waiting:
                break
            if kv.lease not in ttls:

                async def call(
                    endpoint: _Endpoint, metadata: Metadata, lease: int = kv.lease
                ) -> Any:
                    return await endpoint.lease.LeaseTimeToLive(
                        pb.LeaseTimeToLiveRequest(ID=lease),
                        timeout=self._request_timeout,
                        metadata=metadata,
                    )

                ttls[kv.lease] = float(max((await self._call("inspect", call)).TTL, 0))
            found[i] = dataclasses.replace(found[i], expires_in=ttls[kv.lease])
        return found

    def changes(self, key: str) -> AsyncIterator[None]:
        prefix = self._prefix(key)
        return self._watch(prefix, _prefix_end(prefix), "observe")

    async def _watch(self, start: bytes, end: bytes, what: str) -> AsyncIterator[None]:
        """Yield once a watch on the keys [start, end) is set up, then at every change, and
        again each time it is set up anew (after a fail-over or a broken stream: a change may
        have been missed meanwhile)."""
        request = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=start, range_end=end))
        while True:
            endpoint = self._endpoint()
            stream = endpoint.watch.Watch(iter([request]), metadata=await self._metadata(endpoint))
            try:
                async for reply in stream:
                    if reply.events or reply.canceled or reply.created:
                        yield
                    if reply.canceled:
                        break
            except grpc.RpcError as exc:
                if _connection_broken(exc):
                    await self._reset(endpoint)
                elif exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._fail_over(endpoint)
                else:
                    raise self._error(exc, endpoint.address, what) from exc
            finally:
                stream.cancel()
            await _compat.sleep(0.05)  # the stream ended: back-off before watching again

    # Listing (``tenure ls``): one range over the namespace, in pages read at one revision, and
    # one ``LeaseTimeToLive`` per lease that holds something.

    async def in_use(self) -> dict[str, list[Holder]]:
        root = f"{self._namespace}/".encode()
        meta_root = root + b"meta/"
        queues: dict[bytes, list[kv_pb2.KeyValue]] = {}
        owners: dict[bytes, dict[int, dict[str, Any]]] = {}  # an election's metadata by lease
        start, end, revision = root, _prefix_end(root), 0
        while True:
            reply = await self._range(
                "list", pb.RangeRequest(key=start, range_end=end, limit=2000, revision=revision)
            )
            revision = reply.header.revision  # the next pages at the same revision
            for kv in reply.kvs:
                if kv.key.startswith(meta_root):  # <ns>/meta/election/<name>//<lease-hex>
                    election = root + kv.key[len(meta_root) :].partition(b"//")[0] + b"//"
                    owners.setdefault(election, {})[kv.lease] = _json(kv.value)
                    continue
                head, sep, _ = kv.key.partition(b"//")
                if sep:
                    queues.setdefault(head + sep, []).append(kv)
            if not reply.more or not reply.kvs:
                break
            start = reply.kvs[-1].key + b"\0"
        listing: dict[str, list[Holder]] = {}
        leases: dict[int, float] = {}
        for prefix, kvs in sorted(queues.items()):
            key = prefix[len(root) : -2].decode("utf-8", "replace")
            if key.partition("/")[0] not in KINDS or "/" not in key:
                continue  # another namespace's (nested), or not tenure's layout
            kvs.sort(key=lambda kv: kv.create_revision)
            election = key.startswith("election/")
            found = _holders(key, prefix, kvs, owners.get(prefix, {}) if election else None)
            for kv, holder in zip(kvs, found, strict=True):
                if not holder.waiting:
                    leases.setdefault(kv.lease, 0.0)
            listing[key] = found
        for lease in leases:

            async def call(endpoint: _Endpoint, metadata: Metadata, lease: int = lease) -> Any:
                return await endpoint.lease.LeaseTimeToLive(
                    pb.LeaseTimeToLiveRequest(ID=lease),
                    timeout=self._request_timeout,
                    metadata=metadata,
                )

            leases[lease] = float(max((await self._call("list", call)).TTL, 0))
        for key, found in listing.items():
            kvs = queues[self._prefix(key)]
            listing[key] = [
                h if h.waiting else dataclasses.replace(h, expires_in=leases[kv.lease])
                for kv, h in zip(kvs, found, strict=True)
            ]
        return listing

    def namespace_changes(self) -> AsyncIterator[None]:
        """A watch on the whole namespace (every key: contenders and election metadata)."""
        root = f"{self._namespace}/".encode()
        return self._watch(root, _prefix_end(root), "watch")


def _created_at(key: bytes, revision: int) -> Any:
    """The Txn condition: ``key`` exists with this create revision (0: ``key`` is absent)."""
    return pb.Compare(
        key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=revision
    )


def _written_by(puts: Sequence[Any]) -> Any:
    """The Txn condition: the last key ``puts`` writes holds the value they write (an entry's
    metadata, unique to the acquire call that writes it: its owner and acquired_at)."""
    put = puts[-1].request_put
    return pb.Compare(
        key=put.key, target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=put.value
    )


def _prefix_end(prefix: bytes) -> bytes:
    """The end of the key range that starts with ``prefix`` (etcd's range_end convention)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _looked(q: _Queue, mine: int, reply: Any) -> _Place | _Wait:
    """Where my key stands, from a look's reply (``GONE``: my key is not there any more)."""
    if not reply.succeeded:
        return _Place.GONE
    newest = [r.response_range for r in reply.responses]
    return _place(q, mine, newest, reply.header.revision)


def _ranges(prefix: bytes, mode: Mode) -> tuple[_Range, ...]:
    """The ranges of ``_Queue``. tenure's readers are ``<prefix>read/...``, its permits
    ``<prefix>permit/...``: every other key (a writer, or another client's) is exclusive."""
    end = _prefix_end(prefix)
    if not mode.shared or mode.limit == 1:
        return (_Range(prefix, end, 1),)
    tag = prefix + (_TAGS["permit"] if mode.limit else _TAGS["shared"]) + b"/"
    others = (_Range(prefix, tag, 1), _Range(_prefix_end(tag), end, 1))
    return others + ((_Range(prefix, end, mode.limit),) if mode.limit else ())


def _place(q: _Queue, mine: int, newest: Sequence[Any], read_at: int) -> _Place | _Wait:
    """Where my key stands, from the newest keys of each range (newest first; my own key, read
    with them when it was created, is skipped) and whether there are ``more`` older ones.

    Fewer than ``window`` older in every range: I hold it. Else I wait for the newest of them to
    go, as Go's Mutex does (exact when ``window`` is 1: a lock, a reader, a writer, one permit).
    With more permits, a waiter also waits for it to be touched (granted: my place may be next),
    and the first waiter (exactly ``window`` older: all holders) for any of them to go.
    """
    for blocking, found in zip(q.ranges, newest, strict=True):
        older = [kv for kv in found.kvs if kv.create_revision < mine]
        if len(older) < blocking.window:
            continue
        many = blocking.window > 1
        if many and not found.more:
            return _Wait(blocking.start, blocking.end, read_at=read_at)
        newer = older[0]
        # (``more``: the range held keys past the read's limit, all older than those read.)
        last = len(q.ranges) == 1 and not many and len(older) == 1 and not found.more
        return _Wait(
            newer.key, puts=many, mod_revision=newer.mod_revision, read_at=read_at, last=last
        )
    return _Place.OWNER


def _lease_number(lease: Lease) -> int:
    """The etcd lease's id (``Lease.id`` is its 16 hex digits)."""
    return int(lease.id, 16)


def _value(owner: OwnerInfo, acquired_at: dt.datetime, value: str | None, limit: int) -> bytes:
    """A key's value: the owner's metadata (JSON), and a semaphore's limit."""
    data = {
        "owner": owner.owner,
        "host": owner.host,
        "pid": owner.pid,
        "acquired_at": acquired_at.isoformat(),
        "value": value,
    }
    if limit:
        data["limit"] = limit
    return json.dumps(data).encode()


def _json(value: bytes) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _owner_of(value: bytes) -> str | None:
    owner = _json(value).get("owner")
    return owner if isinstance(owner, str) else None


def _limit_of(value: bytes) -> int:
    """A semaphore key's limit (0: none recorded)."""
    limit = _json(value).get("limit")
    return limit if isinstance(limit, int) else 0


def _mode_of(kind: str, prefix: bytes, kv: kv_pb2.KeyValue) -> Mode:
    """A key's mode: its first path segment under the prefix, if the key's ``kind`` has such
    entries; anything else is exclusive (as ``_ranges`` treats it)."""
    tag, slash, _ = kv.key[len(prefix) :].partition(b"/")
    name = _MODES.get(tag) if slash else None
    if name == "permit" and kind == "semaphore":
        return permit(_limit_of(kv.value))
    return SHARED if name == "shared" and kind == "rwlock" else EXCLUSIVE


def _holders(
    key: str,
    prefix: bytes,
    kvs: Sequence[kv_pb2.KeyValue],
    owners: dict[int, dict[str, Any]] | None,
) -> list[Holder]:
    """The queue as ``Holder`` records: ``grantable`` decides who holds, in create order.

    ``owners``: an election's metadata by lease (None: not an election, the keys carry their
    own). A key without tenure's metadata is another client's: ``go`` in the layout of Go's
    ``concurrency`` package (``<prefix><lease-hex>``: etcdctl lock/elect), else ``unknown``.
    """
    found = []
    holding, exclusive_ahead = True, False
    for ahead, kv in enumerate(kvs):
        mode = _mode_of(key.partition("/")[0], prefix, kv)
        holding = holding and grantable(mode, ahead, exclusive_ahead)
        exclusive_ahead = exclusive_ahead or not mode.shared
        data = _json(kv.value)
        value = data.get("value")
        if owners is not None:  # an election: the candidate's value is the key's, as is
            meta = owners.get(kv.lease)
            if meta:  # ("" is None if the metadata says so)
                data, value = meta, meta.get("value")
                value = kv.value.decode("utf-8", "replace") if kv.value or value else value
            elif not _owner_of(kv.value):  # (else: a tenure from before the meta keys)
                value = kv.value.decode("utf-8", "replace")
        if not isinstance(data.get("owner"), str):
            go = kv.key[len(prefix) :] == b"%x" % kv.lease
            data = {"owner": "go" if go else "unknown"}
        acquired_at = data.get("acquired_at")
        found.append(
            Holder(
                name=key.partition("/")[2],
                owner=str(data["owner"]),
                host=str(data.get("host", "")),
                pid=int(data.get("pid", 0)),
                token=kv.create_revision if holding else 0,
                acquired_at=dt.datetime.fromisoformat(acquired_at)
                if holding and acquired_at
                else None,
                value=value,
                mode=mode.name,
                waiting=not holding,
                ended=holding and data.get("ended") is True,  # kept under min_hold
                # (a contender's metadata is written when it arrives)
                waiting_since=dt.datetime.fromisoformat(acquired_at)
                if not holding and acquired_at
                else None,
            )
        )
    return found


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
