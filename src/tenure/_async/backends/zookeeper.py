"""The ``zookeeper://`` / ``zk://`` backend: an ephemeral sequential queue on kazoo.

Layout, under the URL's chroot (``zookeeper://h1:p1,h2:p2/chroot``)::

    /<namespace>/<kind>/<quoted name>/<owner id>-<mark>-<sequence>   one contender (ephemeral)

The mark is the contender's mode: ``lock`` (a lock's or an election's), ``write`` and ``read``
(an rwlock's sides), ``permit<limit>`` (a semaphore's, with the limit it asked for). Node names
are made by ``_mark`` and read by ``_parse`` only. The queue is the children in sequence order;
who is granted follows from it alone (``base.grantable``).

**Every child is a contender**, so tenure and other clients exclude each other on one path:
kazoo's ``Lock``/``Election`` nodes ``<uuid>__lock__<seq>`` (exclusive) and ``ReadLock`` nodes
``<uuid>__rlock__<seq>`` (shared); Curator's ``InterProcessMutex`` nodes
``_c_<uuid>-lock-<seq>``; and, on the safe side, any other node: exclusive, in the order of its
10-digit sequence suffix, or ahead of everyone if it has none. (kazoo sees tenure's nodes when
given ``extra_lock_patterns=["-lock-"]``; Curator sorts every child by what follows its last
``lock-``, which tenure's names already fit.) ``holder``/``contenders`` show such nodes with the
owner ``kazoo:<identifier>``, ``curator`` (host: its node data) or ``unknown``.

- **Leases are ZooKeeper sessions.** ``grant_lease`` opens one kazoo client whose session timeout
  is the TTL; the server may only *negotiate* it within ``[minSessionTimeout, maxSessionTimeout]``
  and silently does so, so a TTL it would change is refused (``ConfigurationError``). Ephemeral
  nodes die with the session: ``revoke_lease`` closes the client.
- **Connection states** (Curator's care): SUSPENDED (connection gone, session maybe alive) loses
  nothing by itself: renewals fail and the core's alarm fires ``lost`` at the local deadline,
  measured from before the last successful renewal. LOST (the server expired the session, or
  authentication failed) calls ``lease.expired`` at once and wakes every waiter of the lease, which
  then fails with ``LockLostError``. A reconnection within the session loses nothing.
- **Acquire = enqueue + wait.** ``_enqueue``: when nobody is queued, one transaction creates our
  node (``_create_if_empty``); otherwise create our ephemeral sequential node (its name carries
  the owner id, so a create whose reply was lost is found again by listing the children) and list
  the children in the same pipelined round trip. The token is the node's creation zxid (strictly
  increasing across the ensemble, and sequence order is zxid order, so grant order too).
  ``_wait_for_turn`` then waits on data watches, set by ``_blockers`` without a herd:

  - a writer (or a lock) watches the node just before it: it is granted when that one is gone;
  - a reader watches the newest writer before it;
  - a semaphore waiter needs any one of the ``limit`` nodes before it gone, so the *first*
    waiter (``limit`` nodes before it, all holders) watches all of them; every later waiter
    watches only the node just before it. A permit granted after waiting, or with anyone listed
    behind it, sets its own data ("promotes"): the data watch fires on that too, and the waiter
    behind lists again and becomes the first waiter. (A permit granted at once with nobody
    behind it needs not: whoever comes later lists it among the first ``limit``.) So a release
    wakes one semaphore waiter; each grant costs at most ``limit`` watches, however many wait;
    watches left on other holders fire later, once, on nothing.

  Nodes ahead of us only ever leave (sequence numbers grow), but they may leave unseen. So a
  deletion our watch reports is applied to the queue as we know it, and if that picture already
  lets us in we are granted without listing (stale nodes in it only make us more careful: a
  handoff to the next in line, or to the readers behind a writer, costs no listing); if it
  still blocks us, or a node is found already gone, or on a promotion, we list again. A deadline,
  cancellation or error deletes our node; a delete that cannot be sent is remembered and retried.
  A waiter also wakes at its lease's local deadline and fails if no renewal moved it.
- **Semaphore limit.** Each permit node carries its limit in its mark. A contender compares its
  own with the oldest node's; if it is the oldest itself, with every node listed behind it (those
  were admitted under an older node that left meanwhile: the semaphore was in use with their
  limit). On a mismatch it deletes its node and raises ``limit_mismatch``. An empty queue takes
  any limit.
- **Renew**: one ``multi`` of ``check`` operations over every node the session holds (one round
  trip however many grants it holds); nodes that are gone are reported lost. kazoo's own pings
  keep the session alive between renewals.
- **Release** (``release``): delete our node by its path, which is ours alone (owner id and
  sequence), so it never deletes a newer holder's node.
- **Auth**: ``zk://user:password@...`` adds digest auth and creates every node with the ACL
  "creator all, world read": other identities can read the queue but cannot delete our nodes
  (ZooKeeper checks DELETE on the parent, which carries the same ACL).

The asyncio flavour bridges kazoo's ``IAsyncResult`` to asyncio futures with
``loop.call_soon_threadsafe`` (no thread per call or waiter); the sync flavour blocks on
``IAsyncResult.get``. Both send through kazoo's asynchronous calls, which lets us pipeline.
"""

from __future__ import annotations

import asyncio  # tenure: async-only
import datetime as dt
import hashlib
import json
import logging
import math
import re
import threading
from base64 import b64encode
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from kazoo import exceptions as kazoo_errors
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import EventType, KazooState, KeeperState, WatchedEvent
from kazoo.security import ACL, OPEN_ACL_UNSAFE, Id, Permissions

from ..._names import OwnerInfo
from ..._types import Capabilities, Holder, utcnow
from ..._url import ParsedURL, bool_option, seconds_option
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
    data_of,
    grantable,
    hold_left,
    limit_mismatch,
    permit,
    refreshes,
)

__all__ = ["ZooKeeperDriver"]

log = logging.getLogger("tenure")
# kazoo logs every failed reconnect attempt as a warning; tenure reports what matters (a lost
# session, failed renewals) itself. Configure "tenure.kazoo" to see kazoo's own messages.
_kazoo_log = logging.getLogger("tenure.kazoo")
_kazoo_log.addHandler(logging.NullHandler())

_FLOAT_OPTIONS = ("connect_timeout", "request_timeout")
_BOOL_OPTIONS = ("use_ssl", "verify_certs")


class _LeaseState:
    """One session: its kazoo client, and what the kazoo threads tell us about it."""

    def __init__(
        self,
        client: KazooClient,
        lease_call: Callable[[Callable[[], None]], None],
        ttl: float,
        sent: float,
    ) -> None:
        self.client = client
        self.ttl = ttl
        # Like the core's deadline: from before the last successful contact was sent.
        self.deadline = sent + ttl
        self.call = lease_call  # runs a callback in the flavour's context (the loop, or inline)
        self.mutex = threading.Lock()
        self.lost_reason: str | None = None
        self.closing = False
        self.wakers: set[Callable[[], None]] = set()
        # Nodes we may leave behind: (parent, owner id) -> node name, "" if a create's reply is
        # missing. Deleted by acquire(), a retry of it, or the next renewal.
        self.orphans: dict[tuple[str, str], str] = {}
        self.active: set[str] = set()  # owner ids inside acquire() right now
        self.lease: Lease | None = None

    def on_state(self, state: str) -> bool:
        """kazoo's connection listener (runs on a kazoo thread; must not block)."""
        if state == KazooState.LOST:
            with self.mutex:
                if self.closing or self.lost_reason is not None:
                    return True
                self.lost_reason = _loss_reason(self.client.client_state)
                wakers = list(self.wakers)
            lease = self.lease
            if lease is not None:
                reason = self.lost_reason
                self.call(lambda: lease.expired(reason))
            for wake in wakers:
                wake()
            # kazoo would reconnect with a new session: this lease is over, stop it.
            self.client.handler.spawn(_stop_quietly, self.client)
            return True  # remove the listener
        if state == KazooState.SUSPENDED:
            log.info("tenure: ZooKeeper connection suspended; the session may still be alive")
        return False


@dataclass(frozen=True, slots=True)
class _Held:
    """``Grant.data`` for ZooKeeper: the node's path and its session."""

    path: str
    state: _LeaseState


@dataclass(frozen=True, slots=True)
class _Node:
    """One contender's node, as its name tells: tenure's ``<owner id>-<mark>-<sequence>``, or
    another client's (``client`` names it: ``kazoo``, ``curator`` or ``unknown``; ``owner`` is
    then "")."""

    name: str
    owner: str
    mode: Mode
    sequence: str
    client: str = "tenure"
    kept: bool = False  # a persistent node keeping a released entry under min_hold


_MODES = {"lock": EXCLUSIVE, "write": EXCLUSIVE, "read": SHARED}
_NAME = re.compile(
    r"(?P<owner>[^-.]+)(?P<kept>\.kept)?-(?P<mark>lock|write|read|permit(?P<limit>[1-9][0-9]*))"
    r"-(?P<sequence>[0-9]{10})"
)
#: Any sequential node: ZooKeeper appends the parent's counter as 10 digits.
_SEQUENCE = re.compile(r"[0-9]{10}$")


def _mark(kind: str, mode: Mode) -> str:
    """The part of a node's name that says its mode (the inverse of ``_parse``)."""
    if mode.limit:
        return f"permit{mode.limit}"
    if mode.shared:
        return "read"
    return "write" if kind == "rwlock" else "lock"


def _parse(name: str) -> _Node:
    """The contender a child node's name describes. Every child is a contender: another
    client's node is one too (kazoo's ``<uuid>__lock__<seq>``, ``__rlock__`` for its readers;
    Curator's ``_c_<uuid>-lock-<seq>``), and so, on the safe side, is a node of no known layout:
    exclusive, in the order of its sequence number, or before everyone without one (so it
    blocks every tenure contender while it exists)."""
    match = _NAME.fullmatch(name)
    if match is not None:
        limit = match["limit"]
        mode = permit(int(limit)) if limit else _MODES[match["mark"]]
        return _Node(name, match["owner"], mode, match["sequence"], kept=bool(match["kept"]))
    sequence = _SEQUENCE.search(name)
    head = name[: sequence.start()] if sequence else name
    if head.endswith(("__lock__", "__rlock__")):
        client = "kazoo"
    elif head.startswith("_c_") and head.endswith("-lock-"):
        client = "curator"
    else:
        client = "unknown"
    mode = SHARED if client == "kazoo" and head.endswith("__rlock__") else EXCLUSIVE
    return _Node(name, "", mode, sequence[0] if sequence else "", client)


def _queue(children: Sequence[str]) -> list[_Node]:
    """The contenders in sequence (= arrival) order, as kazoo and Curator sort them too."""
    return sorted(map(_parse, children), key=lambda node: node.sequence)


def _blockers(queue: list[_Node], me: _Node) -> tuple[list[_Node], bool] | None:
    """None if ``me`` may be granted (``base.grantable``); else the nodes to watch, and whether
    one of them setting its data (a promotion) is news too. See the module docstring."""
    index = queue.index(me)
    ahead = queue[:index]
    exclusive = [node for node in ahead if not node.mode.shared]
    if grantable(me.mode, index, bool(exclusive)):
        return None
    if not me.mode.shared:
        return ahead[-1:], False  # a writer (or a lock): the node just before it
    if exclusive:
        return exclusive[-1:], False  # a reader: the newest writer before it
    if index == me.mode.limit:
        return ahead, False  # the first permit waiter: every holder
    return ahead[-1:], True  # a later permit waiter: the one before it, until it is granted


def _stored_limit(queue: list[_Node], me: _Node) -> int | None:
    """The semaphore's limit if ``me`` asks for another one (see the module docstring; only
    tenure's permits carry a limit: other clients' nodes are left out)."""
    asked = me.mode.limit
    if not asked:
        return None
    permits = [node for node in queue if node.mode.limit]
    others = permits[:1] if permits[0] != me else permits
    return next((node.mode.limit for node in others if node.mode.limit != asked), None)


def _foreign(node: _Node, data: bytes) -> tuple[str, str, str | None]:
    """Owner, host and value of another client's node: kazoo writes its identifier, Curator the
    client's address."""
    text = data.decode("utf-8", "replace")
    if node.client == "kazoo":
        return f"kazoo:{text}", "", text
    if node.client == "curator":
        return "curator", text, None
    return "unknown", "", None


class ZooKeeperDriver:
    """Driver for ``zookeeper://[user:password@]h1:p1,h2:p2/chroot`` (alias ``zk://``)."""

    scheme: ClassVar[str] = "zookeeper"
    capabilities: ClassVar[Capabilities] = Capabilities(
        leases=True,
        fifo=True,
        # The server's own bound is minSessionTimeout (2 x tickTime by default: 4 s with the
        # default tickTime of 2 s); grant_lease refuses any TTL the server negotiates differently.
        min_ttl=0.5,
        # The server expires sessions in tickTime buckets: up to one tick past the timeout
        # (2 s with ZooKeeper's default tickTime; the test servers tick every 250 ms).
        expiry_slack=2.0,
        wakeup="data watch on the node before (a reader: the newest writer; the first permit "
        "waiter: every holder); one watch fired per handoff",
        min_hold=True,  # a persistent kept node that contenders honour and remove
        hold_slack=0.2,
    )
    options: ClassVar[frozenset[str]] = frozenset(
        {*_FLOAT_OPTIONS, *_BOOL_OPTIONS, "ca", "certfile", "keyfile", "keyfile_password"}
    )

    def __init__(self, url: ParsedURL, *, namespace: str, options: dict[str, str]) -> None:
        hosts = url.hosts_with_default(2181)
        self._hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in hosts)
        self._url = url
        chroot = url.path.rstrip("/")
        if chroot and any(part in ("", ".", "..") for part in chroot[1:].split("/")):
            raise ConfigurationError(f"bad ZooKeeper chroot {url.path!r}")
        self._root = chroot + "/" + namespace
        timeouts = {name: seconds_option(options, name, 10.0) for name in _FLOAT_OPTIONS}
        self._connect_timeout = timeouts["connect_timeout"]
        self._request_timeout = timeouts["request_timeout"]
        self._tls: dict[str, Any] = {}
        for name in _BOOL_OPTIONS:
            if name in options:
                self._tls[name] = bool_option(options, name)
        for name in ("ca", "certfile", "keyfile", "keyfile_password"):
            if name in options:
                self._tls[name] = options[name]
        if self._tls and not self._tls.get("use_ssl", False):
            raise ConfigurationError("TLS options need use_ssl=true")
        self._auth: list[tuple[str, str]] = []
        self._acl: list[ACL] = list(OPEN_ACL_UNSAFE)
        if url.username is not None or url.password is not None:
            if not url.username or url.password is None:
                raise ConfigurationError("ZooKeeper digest auth needs user:password@ in the URL")
            credential = f"{url.username}:{url.password}"
            self._auth = [("digest", credential)]
            digest = b64encode(hashlib.sha1(credential.encode()).digest()).decode()
            self._acl = [
                ACL(Permissions.ALL, Id("digest", f"{url.username}:{digest}")),
                ACL(Permissions.READ, Id("world", "anyone")),
            ]
        self._admin: KazooClient | None = None
        self._forked = False
        # Queues last seen busy: their acquires skip the fast path (it would fail).
        self._contended: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"ZooKeeperDriver({self._url.redacted()!r})"

    # The one boundary where kazoo's exceptions become tenure's.

    @contextmanager
    def _errors(self, what: str, state: _LeaseState | None = None) -> Iterator[None]:
        try:
            yield
        except (kazoo_errors.NoAuthError, kazoo_errors.AuthFailedError) as exc:
            raise ConfigurationError(
                f"zookeeper at {self._hosts} refused access ({what}): check the credentials"
                + (f" of user {self._url.username!r}" if self._url.username else "")
                + f" and the ACLs under {self._root!r}"
            ) from exc
        except (KazooTimeoutError, TimeoutError) as exc:
            raise BackendTimeoutError(f"zookeeper at {self._hosts} timed out ({what})") from exc
        except (
            kazoo_errors.ConnectionLoss,
            kazoo_errors.ConnectionClosedError,
            kazoo_errors.SessionExpiredError,
            kazoo_errors.OperationTimeoutError,
        ) as exc:
            if state is not None and state.lost_reason is not None:
                raise LeaseExpired(state.lost_reason) from exc
            raise BackendUnavailableError(
                f"zookeeper at {self._hosts} is unreachable ({what}): {type(exc).__name__}"
            ) from exc
        except RuntimeError as exc:
            # kazoo sets this on a request when its connection loop fails (replies out of
            # order); the loop then stops, and the listener reports the session lost.
            if state is not None and state.lost_reason is not None:
                raise LeaseExpired(state.lost_reason) from exc
            raise BackendUnavailableError(
                f"zookeeper at {self._hosts}: the connection failed ({what}): {exc.args[0]}"
            ) from exc
        except kazoo_errors.KazooException as exc:
            raise BackendError(
                f"zookeeper at {self._hosts} failed ({what}): {type(exc).__name__} {exc}"
            ) from exc

    async def _wait(self, result: Any, timeout: float) -> Any:
        """The value of a kazoo ``IAsyncResult`` (raises its exception), within ``timeout``."""
        # tenure: begin async-only
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def settle() -> None:
            if future.done():
                return
            if result.successful():
                future.set_result(result.value)
            else:
                future.set_exception(result.exception)

        def done(_: Any) -> None:  # on a kazoo thread
            with suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle)

        result.rawlink(done)
        async with asyncio.timeout(timeout):
            return await future
        # tenure: end async-only
        # tenure: begin sync-only
        # return result.get(timeout=timeout)
        # tenure: end sync-only

    def _client(self, session_timeout: float) -> KazooClient:
        return KazooClient(
            hosts=self._hosts,
            timeout=session_timeout,
            auth_data=self._auth or None,
            connection_retry={
                "max_tries": -1,
                "delay": 0.05,
                "backoff": 1.5,
                "max_delay": max(0.1, min(1.0, session_timeout / 4)),
            },
            logger=_kazoo_log,
            **self._tls,
        )

    async def _start(self, client: KazooClient, what: str, timeout: float) -> None:
        try:
            with self._errors(what):
                await asyncio.to_thread(client.start, timeout)  # tenure: async-only
                # tenure: sync client.start(timeout)
        except BackendError as exc:
            await self._stop(client)
            if isinstance(exc, BackendTimeoutError):
                raise BackendUnavailableError(
                    f"zookeeper at {self._hosts} is unreachable ({what}): no server answered "
                    f"within {timeout} s"
                ) from exc.__cause__
            raise

    async def _stop(self, client: KazooClient) -> None:
        await asyncio.to_thread(_stop_quietly, client)  # tenure: async-only
        # tenure: sync _stop_quietly(client)

    def _path(self, key: str) -> str:
        kind, _, name = key.partition("/")
        return f"{self._root}/{kind}/{quote(name, safe='')}"

    async def _admin_client(self) -> KazooClient:
        if self._admin is None:
            if not self._forked:
                raise BackendUnavailableError(f"zookeeper at {self._hosts}: the client is closed")
            self._forked = False
            await self.connect()  # a forked child: its own connection, not the parent's
            assert self._admin is not None
        return self._admin

    async def connect(self) -> None:
        admin = self._client(max(10.0, self._request_timeout))
        await self._start(admin, "connect", self._connect_timeout)
        try:
            with self._errors("connect"):
                await self._wait(admin.exists_async("/"), self._request_timeout)
        except BaseException:
            await self._stop(admin)
            raise
        self._admin = admin

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await self._stop(admin)

    # Leases: one ZooKeeper session each.

    async def grant_lease(self, ttl: float) -> Lease:
        client = self._client(ttl)
        negotiated = _measure_session_timeout(client)
        sent = _compat.monotonic()
        # A session that takes longer than its TTL to open would be lost at once anyway.
        await self._start(client, "open session", min(self._connect_timeout, ttl))
        try:
            with self._errors("open session"):
                # One round trip: after it, the connect reply has been read (and auth sent).
                await self._wait(client.exists_async("/"), self._request_timeout)
            requested = int(ttl * 1000)
            if negotiated and negotiated[-1] != requested:
                raise ConfigurationError(
                    f"ttl {ttl} s is outside the session timeouts the zookeeper server at "
                    f"{self._hosts} allows: it offered {negotiated[-1] / 1000} s instead "
                    "(its minSessionTimeout/maxSessionTimeout, 2 and 20 x tickTime by default)"
                )
        except BaseException:
            await self._stop(client)
            raise
        state = _LeaseState(client, _loop_safe(_compat.thread_safe_caller()), ttl, sent)
        session_id = client.client_id[0] if client.client_id else 0
        lease = Lease(id=f"{session_id:x}", ttl=ttl, data=state)
        state.lease = lease
        client.add_listener(state.on_state)
        return lease

    async def renew_lease(
        self, lease: Lease, grants: Sequence[Grant], timeout: float
    ) -> Sequence[Grant]:
        state = data_of(lease, _LeaseState)
        if state.lost_reason is not None:
            raise LeaseExpired(state.lost_reason)
        client = state.client
        sent = _compat.monotonic()
        with self._errors("renew", state):
            if not grants:
                await self._wait(client.exists_async("/"), timeout)
                gone: list[Grant] = []
            else:
                transaction = client.transaction()
                for grant in grants:
                    transaction.check(data_of(grant, _Held).path, -1)
                results = await self._wait(transaction.commit_async(), timeout)
                gone = []
                if any(isinstance(r, Exception) for r in results):
                    # A failed multi names only its first failure: look at each node.
                    checks = [client.exists_async(data_of(g, _Held).path) for g in grants]
                    for grant, result in zip(grants, checks, strict=True):
                        if await self._wait(result, timeout) is None:
                            gone.append(grant)
        state.deadline = sent + lease.ttl
        await self._delete_orphans(state, timeout)
        return gone

    async def revoke_lease(self, lease: Lease) -> None:
        state = data_of(lease, _LeaseState)
        with state.mutex:
            state.closing = True
        await self._stop(state.client)  # closing the session deletes its ephemeral nodes

    # Contenders.

    async def acquire(
        self, lease: Lease, key: str, owner: OwnerInfo, deadline: float | None, mode: Mode
    ) -> Grant | None:
        state = data_of(lease, _LeaseState)
        name = key.partition("/")[2]
        self._raise_if_lost(state, name)
        parent = self._path(key)
        timeout = min(self._request_timeout, lease.ttl)
        record = {"owner": owner.owner, "host": owner.host, "pid": owner.pid,
                  "value": owner.value}  # fmt: skip
        data = json.dumps(record).encode()
        with state.mutex:
            state.active.add(owner.owner)
        me: _Node | None = None
        granted = False
        try:
            with self._errors("acquire", state):
                mark = _mark(key.partition("/")[0], mode)
                me, stat, queue = await self._enqueue(
                    state, parent, owner.owner, mark, data, timeout
                )
                stored = _stored_limit(queue, me)
                if stored is not None:
                    raise limit_mismatch(name, stored, mode.limit)  # our node goes (finally)
                granted = await self._wait_for_turn(
                    state, parent, me, queue, data, name, deadline, timeout
                )
                if not granted:
                    return None
                # The token is the creation zxid, fixed when the node was created. A deleted
                # node is noticed by the next renewal (one multi of checks per session).
                held = _Held(parent + "/" + me.name, state)
                return Grant(key, owner, int(stat.czxid), lease, utcnow(), held, mode=mode)
        except LeaseExpired as exc:
            raise LockLostError(
                f"the session ended while waiting for {name!r}: {exc}", name=name
            ) from exc
        finally:
            with state.mutex:
                state.active.discard(owner.owner)
                own = me.name if me else state.orphans.get((parent, owner.owner), "")
            if not granted and own:  # "": our create's reply never came (see _enqueue)
                await self._leave(state, parent, owner.owner, own)

    async def _enqueue(
        self, state: _LeaseState, parent: str, owner: str, mark: str, data: bytes, timeout: float
    ) -> tuple[_Node, Any, list[_Node]]:
        """Our node in ``parent``'s queue: the node, its ``Stat``, and the queue as listed after
        it was created. Until then the node is in ``state.orphans`` (its name, or "" while the
        create's reply is due): a retry finds it there, and ``acquire`` deletes it if we fail."""
        client = state.client
        prefix = f"{owner}-{mark}-"
        orphan = (parent, owner)
        with state.mutex:
            retried = orphan in state.orphans
        found: tuple[str, Any] | None = None
        if retried:  # an earlier attempt's create may have reached the server
            listing = await self._children(client, parent, timeout)
            own = next((name for name in listing if name.startswith(prefix)), None)
            if own is not None:
                stat = await self._wait(client.exists_async(parent + "/" + own), timeout)
                found = None if stat is None else (own, stat)
        if found is None:
            with state.mutex:
                state.orphans[orphan] = ""
            if not self._contended.get(parent, False):
                found = await self._create_if_empty(client, parent, prefix, data, timeout)
                if found is not None:
                    listing = [found[0]]
        if found is None:
            created = client.create_async(
                parent + "/" + prefix, data, acl=self._acl, ephemeral=True,
                sequence=True, makepath=True, include_data=True,
            )  # fmt: skip
            listed = client.get_children_async(parent)  # pipelined behind the create
            path, stat = await self._wait(created, timeout)
            found = (path.rpartition("/")[2], stat)
            with state.mutex:
                state.orphans[orphan] = found[0]
            try:
                listing = await self._wait(listed, timeout)
            except kazoo_errors.NoNodeError:  # the parent was made by our create
                listing = await self._children(client, parent, timeout)
        own, stat = found
        me, queue = _parse(own), _queue(listing)
        if me not in queue:
            raise BackendUnavailableError(
                f"zookeeper at {self._hosts}: our queue entry {parent}/{own} vanished"
            )
        with state.mutex:  # acquire() has it now
            state.orphans.pop(orphan, None)
        if len(self._contended) > 10_000:
            self._contended.clear()
        # Queues last seen busy: their next acquires skip the fast path (it would fail).
        self._contended[parent] = queue.index(me) > 0
        return me, stat, queue

    async def _create_if_empty(
        self, client: KazooClient, parent: str, prefix: str, data: bytes, timeout: float
    ) -> tuple[str, Any] | None:
        """The uncontended fast path: one transaction that succeeds only if nobody is queued.

        Deleting the parent fails unless it has no children, so ``delete parent, create parent,
        create our node`` is "enqueue if the queue is empty" in one round trip (the slow path
        needs a create and a listing). The node gets sequence number 0 explicitly; the recreated
        parent's counter then gives later contenders 1, 2... so the queue order holds. The final
        ``set_data`` only makes the reply carry the node's ``Stat`` (its czxid is the token).
        """
        own = prefix + "0" * 10
        transaction = client.transaction()
        transaction.delete(parent)
        transaction.create(parent, b"", acl=self._acl)
        transaction.create(parent + "/" + own, data, acl=self._acl, ephemeral=True)
        transaction.set_data(parent + "/" + own, data)
        results = await self._wait(transaction.commit_async(), timeout)
        if any(isinstance(r, Exception) for r in results):
            return None  # queue not empty, or no parent yet: nothing was changed
        return own, results[3]

    async def _wait_for_turn(
        self,
        state: _LeaseState,
        parent: str,
        me: _Node,
        queue: list[_Node],
        data: bytes,
        name: str,
        deadline: float | None,
        timeout: float,
    ) -> bool:
        """Wait until ``me`` may be granted (True), or ``deadline`` passes (False; a deadline
        already past: do not wait). ``queue`` is the queue as last listed."""
        try_once = deadline is not None and deadline <= _compat.monotonic()
        waited = False
        while True:
            self._raise_if_lost(state, name)
            blockers = _blockers(queue, me)
            if blockers is None:
                if me.mode.limit and (waited or queue[-1] != me):
                    # A permit waiter behind us may watch only us: promote (module docstring).
                    path = parent + "/" + me.name
                    try:
                        await self._wait(state.client.set_async(path, data), timeout)
                    except kazoo_errors.NoNodeError:
                        raise BackendUnavailableError(
                            f"zookeeper at {self._hosts}: our queue entry {path} vanished"
                        ) from None
                return True
            watched, promotion = blockers
            until = deadline
            kept = [node for node in watched if node.kept]
            if kept:  # held under min_hold: until when, by the server's clock?
                left = await self._kept_left(state.client, parent, kept, timeout)
                if left <= 0:  # over (and removed): look again
                    queue = _queue(await self._children(state.client, parent, timeout))
                    continue
                end = _compat.monotonic() + left
                until = end if deadline is None else min(deadline, end)
            if try_once:
                return False
            waited = True
            woken = await self._wait_for_change(
                state, [parent + "/" + node.name for node in watched], promotion, until, timeout
            )
            if woken is None and until != deadline:
                woken = []  # a hold's end: look again
            if woken is None:
                return False
            if woken:  # deletions we were told of: nobody can have queued ahead of us since
                queue = [node for node in queue if parent + "/" + node.name not in woken]
                if _blockers(queue, me) is None:
                    continue  # granted even if older nodes we still count have gone meanwhile
                # Still blocked, maybe only by nodes that left unseen (the deleted one was
                # granted after them): watching one would find it gone. List instead.
            queue = _queue(await self._children(state.client, parent, timeout))
            if me not in queue:
                raise BackendUnavailableError(
                    f"zookeeper at {self._hosts}: our queue entry for {name!r} vanished"
                )

    async def _wait_for_change(
        self,
        state: _LeaseState,
        paths: list[str],
        promotion: bool,
        deadline: float | None,
        timeout: float,
    ) -> list[str] | None:
        """Set a data watch on each of ``paths`` and wait until one fires. Returns the paths the
        watches saw deleted; ``[]`` when the queue must be listed again (a node was already
        gone, or, with ``promotion``, had set its data; a node changed; the session ended); None
        when ``deadline`` passes. (A data watch, unlike an exists watch, is not left behind on a
        node that is already gone: that one would never fire.)"""
        woken = _compat.Event()
        deleted: list[str] = []
        call = state.call

        def wake() -> None:  # from any thread
            call(woken.set)

        def on_event(event: WatchedEvent) -> None:  # deleted, changed, or the session ended
            if event.type == EventType.DELETED:
                deleted.append(event.path)
            wake()

        with state.mutex:
            state.wakers.add(wake)
        try:
            sent = [state.client.get_async(path, watch=on_event) for path in paths]
            for result in sent:  # pipelined: one round trip however many
                try:
                    _, stat = await self._wait(result, timeout)
                except kazoo_errors.NoNodeError:
                    return []
                if promotion and stat.version > 0:
                    return []
            while True:
                # Also wake at the lease's local deadline: if no renewal moved it, the session
                # is lost (the core's alarm says so too) and this waiter must fail.
                now = _compat.monotonic()
                if now >= state.deadline:
                    raise LeaseExpired("no renewal succeeded before the local deadline")
                remaining = None if deadline is None else deadline - now
                if remaining is not None and remaining <= 0:
                    return None
                wait = (
                    state.deadline - now
                    if remaining is None
                    else min(remaining, state.deadline - now)
                )
                if await woken.wait(wait):
                    return list(deleted)
        finally:
            with state.mutex:
                state.wakers.discard(wake)

    async def _children(self, client: KazooClient, parent: str, timeout: float) -> list[str]:
        try:
            children: list[str] = await self._wait(client.get_children_async(parent), timeout)
        except kazoo_errors.NoNodeError:
            return []
        return children

    def _raise_if_lost(self, state: _LeaseState, name: str) -> None:
        reason = state.lost_reason
        if reason is None and _compat.monotonic() >= state.deadline:
            # Cut off: kazoo cannot learn that the server expired the session, but the core's
            # alarm has fired; a retried acquire must not wait on in a dead session.
            reason = "no renewal succeeded before the local deadline"
        if reason is not None:
            raise LockLostError(
                f"the session ended while waiting for {name!r}: {reason}", name=name
            )

    async def _leave(self, state: _LeaseState, parent: str, owner: str, own: str) -> None:
        """Delete our node; if that cannot be done now, remember it for the next renewal."""
        sent = state.client.delete_async(parent + "/" + own)  # sent now, even if we are cancelled
        with state.mutex:
            state.orphans.pop((parent, owner), None)
        if state.lost_reason is not None or _compat.monotonic() >= state.deadline:
            return  # the session is over (or about to be): the node goes with it
        try:
            with self._errors("leave", state), suppress(kazoo_errors.NoNodeError):
                await self._wait(sent, min(self._request_timeout, 5.0))
        except (BackendError, LeaseExpired) as exc:
            if state.lost_reason is None:
                log.info("tenure: leaving the queue of %s failed (%s); will retry", parent, exc)
                with state.mutex:
                    state.orphans[(parent, owner)] = own

    async def _delete_orphans(self, state: _LeaseState, timeout: float) -> None:
        with state.mutex:
            orphans = {k: v for k, v in state.orphans.items() if k[1] not in state.active}
            for k in orphans:
                del state.orphans[k]
        for (parent, owner), known in orphans.items():
            own = known
            try:
                with self._errors("clean up", state):
                    if not own:
                        queue = _queue(await self._children(state.client, parent, timeout))
                        own = next((node.name for node in queue if node.owner == owner), "")
                    if own:
                        with suppress(kazoo_errors.NoNodeError):
                            await self._wait(state.client.delete_async(parent + "/" + own), timeout)
            except (BackendError, LeaseExpired):
                with state.mutex:
                    state.orphans.setdefault((parent, owner), own)

    async def release(self, grant: Grant) -> bool:
        held = data_of(grant, _Held)
        keep = hold_left(grant)
        if keep:
            return await self._keep(grant, held, keep)
        try:
            with self._errors("release", held.state):
                try:
                    await self._wait(
                        held.state.client.delete_async(held.path), self._request_timeout
                    )
                except kazoo_errors.NoNodeError:
                    return False  # already gone; the path is ours alone, never a newer holder's
        except LeaseExpired:
            # The session ended during the release (it was not lost when the release began, or
            # the core would not have called us) and took the node with it, if our delete did
            # not: either way the lock was ours until now and is free now.
            return True
        return True

    async def _keep(self, grant: Grant, held: _Held, keep: float) -> bool:
        """``min_hold``: replace my ephemeral node, in one transaction, by a persistent *kept*
        node ``<owner>.kept-<mark>-<sequence>`` (the same sequence: the same place in the
        queue) recording the hold (``hold_ms`` from its creation, by the server's clock). It
        outlives this session; contenders it blocks remove it once the hold is over
        (``_kept_left``). My node's data is set first in the same transaction, so a waiter's
        data watch on it fires as *changed*, not *deleted*: the waiter lists the queue again
        (and finds the kept node) instead of taking the delete for a handoff."""
        parent, _, own = held.path.rpartition("/")
        owner, _, rest = own.partition("-")
        record = {
            "owner": grant.owner.owner,
            "host": grant.owner.host,
            "pid": grant.owner.pid,
            "value": grant.owner.value,
            "token": grant.token,
            "acquired_at": grant.acquired_at.isoformat(),
            "hold_ms": math.ceil(keep * 1000),
        }
        client = held.state.client
        transaction = client.transaction()
        transaction.set_data(held.path, b"ended")
        transaction.delete(held.path)
        transaction.create(
            f"{parent}/{owner}.kept-{rest}", json.dumps(record).encode(), acl=self._acl
        )
        try:
            with self._errors("release", held.state):
                results = await self._wait(transaction.commit_async(), self._request_timeout)
        except LeaseExpired:
            return True  # as in release(): the node went with the session (no hold kept)
        return not any(isinstance(r, Exception) for r in results)

    async def _kept_left(
        self, client: KazooClient, parent: str, kept: list[_Node], timeout: float
    ) -> float:
        """Seconds until the first of the ``kept`` nodes ends its hold (by the server's clock:
        a write to the queue's parent node tells the server's time now); 0 if one has ended, which
        is then deleted (by whichever contender comes first; the version check makes sure it is
        that node)."""
        reads = [(node, client.get_async(f"{parent}/{node.name}")) for node in kept]
        clock = client.set_async(parent, b"")  # pipelined: one round trip
        found = []
        for node, result in reads:
            try:
                data, stat = await self._wait(result, timeout)
            except kazoo_errors.NoNodeError:
                return 0.0  # gone meanwhile
            found.append((node, stat, int(json.loads(data).get("hold_ms", 0))))
        now = (await self._wait(clock, timeout)).mtime
        left = math.inf
        for node, stat, hold_ms in found:
            end = stat.ctime + hold_ms
            if end <= now:
                with suppress(kazoo_errors.NoNodeError, kazoo_errors.BadVersionError):
                    await self._wait(
                        client.delete_async(f"{parent}/{node.name}", version=stat.version), timeout
                    )
                return 0.0
            left = min(left, (end - now) / 1000)
        return left

    async def check(self, grant: Grant) -> bool:
        held = data_of(grant, _Held)
        try:
            with self._errors("check", held.state):
                stat = await self._wait(
                    held.state.client.exists_async(held.path), self._request_timeout
                )
        except LeaseExpired:
            return False
        return stat is not None

    async def set_value(self, grant: Grant, value: str) -> bool:
        held = data_of(grant, _Held)
        client = held.state.client
        try:
            with self._errors("set value", held.state):
                try:
                    data, _ = await self._wait(client.get_async(held.path), self._request_timeout)
                    record = json.loads(data)
                    record["value"] = value
                    await self._wait(
                        client.set_async(held.path, json.dumps(record).encode()),
                        self._request_timeout,
                    )
                except kazoo_errors.NoNodeError:
                    return False
        except LeaseExpired:
            return False
        return True

    # Inspection (through the driver's own client, outside any session).

    async def holder(self, key: str) -> Holder | None:
        found = await self._contenders(key, first_only=True)
        return found[0] if found else None

    async def contenders(self, key: str) -> list[Holder]:
        return await self._contenders(key, first_only=False)

    async def _contenders(self, key: str, first_only: bool) -> list[Holder]:
        client = await self._admin_client()
        parent = self._path(key)
        name = key.partition("/")[2]
        found: list[Holder] = []
        with self._errors("contenders"):
            queue = _queue(await self._children(client, parent, self._request_timeout))
            if first_only:  # (up to the first node not kept: a kept one may be over)
                queue = queue[
                    : next((i for i, n in enumerate(queue) if not n.kept), len(queue)) + 1
                ]
            now_ms = 0
            if any(node.kept for node in queue):  # the server's time: a write tells it
                stat = await self._wait(client.set_async(parent, b""), self._request_timeout)
                now_ms = stat.mtime
            sent = [(node, client.get_async(parent + "/" + node.name)) for node in queue]
            waiting = exclusive_ahead = False
            for node, result in sent:
                try:
                    data, stat = await self._wait(result, self._request_timeout)
                except kazoo_errors.NoNodeError:
                    continue  # left meanwhile
                if node.client == "tenure" and node.kept:
                    record = json.loads(data)
                    left = stat.ctime + int(record.get("hold_ms", 0)) - now_ms
                    if left > 0:  # (else over: the next contender removes it)
                        found.append(_kept_holder(name, node, record, left / 1000))
                        exclusive_ahead = exclusive_ahead or not node.mode.shared
                    continue
                if node.client == "tenure":
                    record = json.loads(data)
                    owner, host, value = (
                        record["owner"],
                        record.get("host", ""),
                        record.get("value"),
                    )
                else:
                    owner, host, value = _foreign(node, data or b"")
                    value = value if key.startswith("election/") else None
                    record = {}
                waiting = waiting or not grantable(node.mode, len(found), exclusive_ahead)
                exclusive_ahead = exclusive_ahead or not node.mode.shared
                found.append(
                    Holder(
                        name=name,
                        owner=owner,
                        host=host,
                        pid=int(record.get("pid", 0)),
                        token=0 if waiting else int(stat.czxid),
                        acquired_at=None
                        if waiting
                        else dt.datetime.fromtimestamp(stat.ctime / 1000, dt.UTC),
                        expires_in=None,  # a session's expiry is known only to the server
                        value=value,
                        mode=node.mode.name,
                        waiting=waiting,
                        waiting_since=dt.datetime.fromtimestamp(stat.ctime / 1000, dt.UTC)
                        if waiting
                        else None,
                    )
                )
        return found

    async def changes(self, key: str) -> AsyncIterator[None]:
        client = await self._admin_client()
        parent = self._path(key)
        call = _loop_safe(_compat.thread_safe_caller())
        while True:
            woken = _compat.Event()

            def on_event(_: WatchedEvent, woken: _compat.Event = woken) -> None:
                call(woken.set)

            with self._errors("observe"):
                try:
                    queue = _queue(
                        await self._wait(
                            client.get_children_async(parent, watch=on_event),
                            self._request_timeout,
                        )
                    )
                except kazoo_errors.NoNodeError:
                    queue = []
                    # No queue yet: wake when it is created.
                    await self._wait(
                        client.exists_async(parent, watch=on_event), self._request_timeout
                    )
                if queue:  # the holder's value may change too (Election.proclaim)
                    with suppress(kazoo_errors.NoNodeError):  # gone: the child watch fires
                        await self._wait(
                            client.get_async(parent + "/" + queue[0].name, watch=on_event),
                            self._request_timeout,
                        )
            yield
            while not await woken.wait(self._request_timeout):
                if self._admin is None:
                    return

    def forget_after_fork(self) -> None:
        # kazoo's threads do not survive fork(); the child's sessions are dropped by the core,
        # and the inspection client is opened again on first use.
        self._admin = None
        self._forked = True

    # Listing (``tenure ls``): the children of each kind's node, then every name's queue listed
    # in one pipelined burst; only the names with contenders are read further.

    async def in_use(self) -> dict[str, list[Holder]]:
        client = await self._admin_client()
        t = self._request_timeout
        listing: dict[str, list[Holder]] = {}
        with self._errors("list"):
            kinds = {kind: client.get_children_async(f"{self._root}/{kind}") for kind in KINDS}
            names: list[str] = []
            for kind, result in kinds.items():
                try:
                    children = await self._wait(result, t)
                except kazoo_errors.NoNodeError:
                    continue
                names.extend(f"{kind}/{unquote(child)}" for child in children)
            queues = [(key, client.get_children_async(self._path(key))) for key in sorted(names)]
            busy = []
            for key, result in queues:
                try:
                    if await self._wait(result, t):
                        busy.append(key)
                except kazoo_errors.NoNodeError:
                    continue
        for key in busy:
            found = await self._contenders(key, first_only=False)
            if found:
                listing[key] = found
        return listing

    def namespace_changes(self) -> AsyncIterator[None]:
        # A child watch per name would cost a watch per name per listing: look again at a
        # bounded interval instead.
        return refreshes()


def _kept_holder(name: str, node: _Node, record: dict[str, Any], left: float) -> Holder:
    """A kept node (``min_hold``) as the ended holder it stands for, ``left`` seconds more."""
    at = record.get("acquired_at")
    return Holder(
        name=name,
        owner=str(record.get("owner", node.owner)),
        host=str(record.get("host", "")),
        pid=int(record.get("pid", 0)),
        token=int(record.get("token", 0)),
        acquired_at=dt.datetime.fromisoformat(at) if isinstance(at, str) else None,
        expires_in=left,
        value=record.get("value"),
        mode=node.mode.name,
        ended=True,
    )


def _loss_reason(client_state: str) -> str:
    if client_state == KeeperState.EXPIRED_SESSION:
        return "the ZooKeeper session expired"
    if client_state == KeeperState.AUTH_FAILED:
        return "ZooKeeper authentication failed"
    # kazoo's connection loop gave up (e.g. a reply out of order: "xids do not match") and
    # will not reconnect: nothing can renew the session any more.
    return f"the ZooKeeper connection closed for good ({client_state})"


def _measure_session_timeout(client: KazooClient) -> list[int]:
    """Record the session timeout the server negotiates (kazoo keeps it to itself).

    kazoo's connection handler returns ``read_timeout = negotiated * 2 / 3`` from ``_connect``;
    the list gets the negotiated value in milliseconds after each connect.
    """
    negotiated: list[int] = []
    connection = client._connection
    connect = connection._connect

    def measured_connect(*args: Any) -> Any:
        read_timeout, connect_timeout = connect(*args)
        negotiated.append(round(read_timeout * 3 / 2))
        return read_timeout, connect_timeout

    connection._connect = measured_connect
    return negotiated


def _loop_safe(call: Callable[[Callable[[], None]], None]) -> Callable[[Callable[[], None]], None]:
    """``call``, but a closed event loop (nobody left to tell) is not an error."""

    def safe(fn: Callable[[], None]) -> None:
        try:
            call(fn)
        except RuntimeError:
            log.debug("tenure: dropped a ZooKeeper event: the event loop is closed")

    return safe


def _stop_quietly(client: KazooClient) -> None:
    try:
        client.stop()
        client.close()
    except Exception as exc:
        log.debug("tenure: closing a kazoo client: %s", exc)
