"""The driver protocol: what a backend (etcd, Redis, ZooKeeper, PostgreSQL, files) implements.

The core (``session.py``, ``lock.py``, ``election.py``) owns everything that is the same on every
backend: local coalescing of waiters, reentrancy, retries, deadlines, keep-alive scheduling, the
``lost`` events. A driver only talks to its server:

- **Leases.** ``grant_lease(ttl)`` creates a session's lease; ``renew_lease`` renews it and every
  entry in it in O(1) round trips, and reports entries that are gone; ``revoke_lease`` ends it and
  so frees everything in it. A driver raises :class:`LeaseExpired` when the server says the lease
  is gone, and may call ``lease.expired(reason)`` / ``grant.lost(reason)`` from its own watches.
- **Contenders.** ``acquire(lease, key, owner, deadline, mode)`` enqueues a contender for ``key``
  owned by ``owner.owner`` (a random 128-bit id), waits until it may be granted (woken by the
  backend, never a sleep loop) and returns a :class:`Grant` with its fencing token; or returns
  ``None`` when the ``deadline`` (a ``monotonic()`` time; ``<= now`` means try once) passes,
  leaving nothing behind. Retrying an acquire with the same owner id must find the earlier entry,
  not add a second one. Cancellation (asyncio) must also leave nothing behind.
- **Modes.** Every contender has a :class:`Mode`: ``EXCLUSIVE`` (a lock, an election, an
  rwlock's writer), ``SHARED`` (an rwlock's reader) or ``permit(limit)`` (a semaphore's). One rule,
  :func:`grantable`, decides on every backend who holds a key: in arrival order, an exclusive
  contender is granted when it is first; a shared one when no exclusive contender is before it
  and, with a limit, fewer than ``limit`` contenders are before it. So the granted contenders are
  always a prefix of the queue, a plain lock is the special case, and a release can wake exactly
  those that can now be granted. Every grant of any mode bumps the key's one fencing counter. A
  key's ``limit`` is stored with it while it has contenders; ``acquire`` with another limit
  raises :func:`limit_mismatch`.
- **Release and inspection** are owner-checked: ``release`` deletes only the caller's own entry and
  returns False if it found none. (A retried release whose first reply was lost finds nothing and
  returns False too: the core, not the driver, counts that as released; see
  ``Grant.release_sent``.) ``check`` says whether the entry is still there.
- **min_hold.** A release while :func:`hold_left` is positive keeps the entry, marked ended, for
  that long (the server's expiry where it has one); acquirers treat it as a holder meanwhile and
  ``holder``/``contenders`` report it with ``ended=True``. Drivers that do this say so in
  ``capabilities.min_hold``; the core refuses ``min_hold`` on the others.
- ``holder``/``contenders`` report :class:`~tenure.Holder` records (with ``mode``, and
  ``waiting=True`` for queued contenders); ``changes`` yields when a key's holder may have changed
  (for ``Election.observe``).
- **Listing** (``tenure ls``): ``in_use`` returns every key of the namespace that has holders or
  waiters with its contenders, in a number of round trips that grows with the number of keys
  far slower than one per key; ``namespace_changes`` yields when anything in the namespace may
  have changed: woken by the server where it can watch a whole namespace, else every
  :data:`REFRESH` seconds (:func:`refreshes`).

Keys are ``"<kind>/<name>"`` with a kind from :data:`KINDS` and a name already validated by
``tenure._names.check_name``; the driver maps them into its namespace. Kinds never interact.

Every method translates its client library's exceptions to :mod:`tenure.errors` at this boundary
(``BackendUnavailableError``, ``BackendTimeoutError``, ``BackendError``), ``raise ... from exc``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol, TypeVar, final

from ..._names import OwnerInfo
from ..._types import Capabilities, Holder
from ..._url import ParsedURL
from ...errors import ConfigurationError
from .. import _compat

__all__ = [
    "DRIFT",
    "EXCLUSIVE",
    "KINDS",
    "REFRESH",
    "SHARED",
    "Driver",
    "Grant",
    "Lease",
    "LeaseExpired",
    "Mode",
    "data_of",
    "grantable",
    "hold_left",
    "limit_mismatch",
    "permit",
    "refreshes",
]

#: Part of the TTL kept back for clock-rate differences between this host and the server.
DRIFT: Final = 0.01

#: The key spaces; a name in one never meets the same name in another.
KINDS: Final = ("lock", "election", "rwlock", "semaphore")

#: Seconds between two looks of ``namespace_changes`` on a backend that cannot watch a namespace.
REFRESH: Final = 2.0


async def refreshes(interval: float = REFRESH) -> AsyncIterator[None]:
    """``namespace_changes`` of a backend without a namespace-wide watch: yield now, then every
    ``interval`` seconds (a bounded refresh, not a busy loop)."""
    while True:
        yield
        await _compat.sleep(interval)


@dataclass(frozen=True, slots=True)
@final
class Mode:
    """How a contender shares its key (see the module docstring and :func:`grantable`).

    ``name`` is what :class:`~tenure.Holder` reports (``"exclusive"``, ``"shared"``,
    ``"permit"``); ``limit`` is a semaphore's number of permits (0: no limit).
    """

    name: str
    shared: bool
    limit: int = 0


EXCLUSIVE: Final = Mode("exclusive", shared=False)
SHARED: Final = Mode("shared", shared=True)


def permit(limit: int) -> Mode:
    """A semaphore permit: shared among the first ``limit`` contenders."""
    return Mode("permit", shared=True, limit=limit)


def grantable(mode: Mode, ahead: int, exclusive_ahead: bool) -> bool:
    """The one grant rule: may a contender in ``mode`` with ``ahead`` live contenders before it
    (``exclusive_ahead``: one of them exclusive) be granted? FIFO, no starvation: a reader that
    arrives after a waiting writer waits behind it."""
    if not mode.shared:
        return ahead == 0
    return not exclusive_ahead and (mode.limit == 0 or ahead < mode.limit)


def limit_mismatch(name: str, stored: int, asked: int) -> ConfigurationError:
    """The error for a semaphore contender whose limit differs from the stored one."""
    return ConfigurationError(
        f"semaphore {name!r} has limit {stored} while it has holders or waiters; "
        f"this contender asked for limit {asked}"
    )


class LeaseExpired(Exception):
    """Raised by ``renew_lease`` when the server says the lease no longer exists."""


@final
class Lease:
    """A session's lease as the driver knows it; ``data`` is the driver's own state.

    ``ended`` is True once the session is lost or closed; a driver's waiter can ask to be woken
    then (``wake_on_end``), to fail at once instead of at its next round trip.
    """

    __slots__ = ("_on_expired", "_wakers", "data", "ended", "id", "ttl")

    def __init__(self, id: str, ttl: float, data: Any = None) -> None:
        self.id = id
        self.ttl = ttl
        self.data = data
        self.ended = False
        self._on_expired: Callable[[str], None] | None = None
        self._wakers: set[Callable[[], None]] = set()

    def expired(self, reason: str) -> None:
        """Called by a driver that learns the lease is gone outside ``renew_lease``."""
        if self._on_expired is not None:
            self._on_expired(reason)

    def wake_on_end(self, waker: Callable[[], None]) -> Callable[[], None]:
        """Call ``waker()`` (from any thread) when the session ends; returns the undo."""
        self._wakers.add(waker)
        if self.ended:
            waker()
        return lambda: self._wakers.discard(waker)

    def end(self) -> None:
        """Called by the session once it is lost or closed."""
        self.ended = True
        for waker in list(self._wakers):  # one C call under the GIL: no concurrent change
            waker()

    def __repr__(self) -> str:
        return f"Lease(id={self.id!r}, ttl={self.ttl})"


@final
class Grant:
    """One held entry: who holds ``key`` in which ``mode`` under which ``token``."""

    __slots__ = (
        "__weakref__",
        "_on_lost",
        "acquired_at",
        "data",
        "keep_until",
        "key",
        "lease",
        "mode",
        "owner",
        "release_sent",
        "renew_by",
        "token",
    )

    def __init__(
        self,
        key: str,
        owner: OwnerInfo,
        token: int,
        lease: Lease,
        acquired_at: dt.datetime,
        data: Any = None,
        renew_by: float | None = None,
        mode: Mode = EXCLUSIVE,
    ) -> None:
        self.key = key
        self.mode = mode
        self.owner = owner
        self.token = token
        self.lease = lease
        self.acquired_at = acquired_at
        self.data = data
        #: A ``monotonic()`` time by which this entry must be renewed, when it is earlier than
        #: the session's own deadline (a driver whose entries have separate server-side timers,
        #: like PostgreSQL's connections); the session's deadline is never later than this.
        self.renew_by = renew_by
        #: Set by the core once a release of this entry was sent; a later attempt that finds
        #: nothing then counts as released (the first one's reply was lost). Drivers never read it.
        self.release_sent = False
        #: Set by the core for a ``min_hold`` lock: the ``monotonic()`` time until which a
        #: release must keep the entry (see :func:`hold_left`); None: release frees at once.
        self.keep_until: float | None = None
        self._on_lost: Callable[[str], None] | None = None

    def lost(self, reason: str) -> None:
        """Called by a driver that learns the entry was deleted or taken."""
        if self._on_lost is not None:
            self._on_lost(reason)

    def __repr__(self) -> str:
        return f"Grant(key={self.key!r}, token={self.token}, owner={self.owner.owner!r})"


def hold_left(grant: Grant) -> float:
    """Seconds a release of ``grant`` must still keep its entry (``min_hold``; 0: free it).

    The core sets ``grant.keep_until`` from the moment the grant's reply arrived, which is after
    the server granted: so the kept entry never ends before grant + ``min_hold``. A driver whose
    ``capabilities.min_hold`` is True keeps the entry, marked as ended, for this long on the
    server (its own expiry), outside the session's lease, so no renewal and no process is needed
    to keep it, and nobody else is granted meanwhile.
    """
    if grant.keep_until is None:
        return 0.0
    return max(0.0, grant.keep_until - time.monotonic())


D = TypeVar("D")


def data_of(entry: Lease | Grant, kind: type[D]) -> D:
    """A driver's own record in ``entry.data``, checked to be a ``kind``: the typed way back."""
    data = entry.data
    assert isinstance(data, kind), f"{entry!r} carries {type(data).__name__}, not {kind.__name__}"
    return data


class Driver(Protocol):
    """What every backend implements (see the module docstring for the contract)."""

    scheme: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    #: URL query / keyword options this driver accepts besides the core's (ttl, namespace, timeout)
    options: ClassVar[frozenset[str]]

    def __init__(self, url: ParsedURL, *, namespace: str, options: dict[str, str]) -> None: ...

    async def connect(self) -> None:
        """Reach the server (raises BackendUnavailableError naming the address)."""

    async def close(self) -> None:
        """Close connections; held entries are left to their leases."""

    async def grant_lease(self, ttl: float) -> Lease: ...

    async def renew_lease(
        self, lease: Lease, grants: Sequence[Grant], timeout: float
    ) -> Sequence[Grant]:
        """Renew ``lease`` and the ``grants`` in it; return those that are no longer held."""
        ...

    async def revoke_lease(self, lease: Lease) -> None: ...

    async def acquire(
        self, lease: Lease, key: str, owner: OwnerInfo, deadline: float | None, mode: Mode
    ) -> Grant | None: ...

    async def release(self, grant: Grant) -> bool:
        """Delete the caller's own entry; False if it found none."""
        ...

    async def check(self, grant: Grant) -> bool:
        """Whether the entry is still held (one round trip at most)."""
        ...

    async def set_value(self, grant: Grant, value: str) -> bool:
        """Replace the entry's value (``Election.proclaim``); False if no longer held."""
        ...

    async def holder(self, key: str) -> Holder | None: ...

    async def contenders(self, key: str) -> list[Holder]: ...

    def changes(self, key: str) -> AsyncIterator[None]:
        """Yield once the watch is set up, then each time the holder of ``key`` may have changed."""
        ...

    async def in_use(self) -> dict[str, list[Holder]]:
        """Every key (``"<kind>/<name>"``) of the namespace that has holders or waiters, with its
        contenders as ``contenders`` reports them (an unknown namespace: ``{}``)."""
        ...

    def namespace_changes(self) -> AsyncIterator[None]:
        """Yield at once, then each time anything in the namespace may have changed."""
        ...

    def forget_after_fork(self) -> None:
        """In a forked child: drop inherited connections and entries without touching the server."""
