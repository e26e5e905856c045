"""``RWLock`` and ``Semaphore``: the shared modes of the one driver queue.

Both are made of :class:`~tenure.aio.Lock` objects whose contenders carry a mode (see
``backends/base.py``): an rwlock's ``read`` side is ``SHARED``, its ``write`` side ``EXCLUSIVE``;
a semaphore is one lock object whose contender is a ``permit(limit)``. Everything a ``Lock``
promises holds for each (leases, ``lost``, fencing tokens, owner-checked release, timeouts).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, final

from .._names import check_name
from .._types import Holder
from ..errors import ConfigurationError
from .backends.base import EXCLUSIVE, SHARED, Driver, permit
from .lock import AsyncLock

if TYPE_CHECKING:
    from .session import AsyncSession

__all__ = ["AsyncRWLock", "AsyncSemaphore", "check_limit"]


@final
class AsyncRWLock:
    """A read-write lock on ``name``: ``read`` (shared) and ``write`` (exclusive) are ``Lock``s.

    Any number of readers hold it at once; a writer excludes readers and writers. Grants follow
    arrival order: a reader that arrives while a writer waits queues behind it, and the run of
    readers at the head of the queue is granted together. One counter gives the fencing tokens
    of both sides. A thread (task) that holds either side and asks for either side again gets
    ``LockError`` at once (no upgrade or downgrade: it would wait for itself).
    Make one with ``Client.rwlock`` or ``Session.rwlock``.
    """

    def __init__(
        self,
        get_session: Callable[[float | None], Awaitable[AsyncSession]],
        driver: Driver,
        name: str,
        *,
        timeout: float | None,
        min_hold: float | None = None,
        skip_if_busy: bool = False,
    ) -> None:
        self.name = check_name(name)
        self._driver = driver
        self._key = f"rwlock/{name}"
        #: The shared side: any number of holders at once.
        self.read = AsyncLock(
            get_session,
            driver,
            name,
            timeout=timeout,
            reentrant=False,
            kind="rwlock",
            mode=SHARED,
            min_hold=min_hold,
            skip_if_busy=skip_if_busy,
        )
        #: The exclusive side: no reader and no other writer.
        self.write = AsyncLock(
            get_session,
            driver,
            name,
            timeout=timeout,
            reentrant=False,
            kind="rwlock",
            mode=EXCLUSIVE,
            min_hold=min_hold,
            skip_if_busy=skip_if_busy,
        )

    def __repr__(self) -> str:
        state = "read" if self.read.held else "write" if self.write.held else "free"
        return f"<RWLock {self.name!r} {state}>"

    async def holders(self) -> list[Holder]:
        """Who holds the rwlock now (``Holder.mode``: ``"shared"`` or ``"exclusive"``)."""
        return [h for h in await self._driver.contenders(self._key) if not h.waiting]

    async def contenders(self) -> list[Holder]:
        """The holders, then the waiters in grant order (``Holder.waiting=True``)."""
        return await self._driver.contenders(self._key)


@final
class AsyncSemaphore(AsyncLock):
    """At most ``limit`` holders of ``name`` at once, across processes and machines.

    A ``Lock`` in every other respect: one permit per object (several concurrent permits in one
    process are several objects), its own fencing token per permit, ``lost``, ``run``... A waiter
    is granted when it is among the first ``limit`` live contenders (FIFO where the backend is).
    The limit is stored with the semaphore while it has holders or waiters: a contender with
    another limit gets ``ConfigurationError`` naming both. Make one with ``Client.semaphore`` or
    ``Session.semaphore``.
    """

    def __init__(
        self,
        get_session: Callable[[float | None], Awaitable[AsyncSession]],
        driver: Driver,
        name: str,
        *,
        limit: int,
        timeout: float | None,
        min_hold: float | None = None,
        skip_if_busy: bool = False,
    ) -> None:
        self.limit = check_limit(limit)
        super().__init__(
            get_session,
            driver,
            name,
            timeout=timeout,
            reentrant=False,
            kind="semaphore",
            mode=permit(self.limit),
            min_hold=min_hold,
            skip_if_busy=skip_if_busy,
        )

    def __repr__(self) -> str:
        return f"<Semaphore {self.name!r} limit={self.limit} {'held' if self.held else 'free'}>"

    async def holders(self) -> list[Holder]:
        """The permit holders now (``Holder.mode == "permit"``)."""
        return [h for h in await self._driver.contenders(self._key) if not h.waiting]

    async def contenders(self) -> list[Holder]:
        """The permit holders, then the waiters in grant order (``Holder.waiting=True``)."""
        return await self._driver.contenders(self._key)


def check_limit(limit: object) -> int:
    """A semaphore's limit: an int >= 1 (else ``ConfigurationError``)."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ConfigurationError(f"semaphore limit must be an int >= 1, not {limit!r}")
    if limit < 1:
        raise ConfigurationError(f"semaphore limit must be >= 1, got {limit}")
    return limit
