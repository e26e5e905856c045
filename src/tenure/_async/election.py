"""``Election``: leader election and active/standby on a backend's own contender queue.

A candidate campaigns by queueing for the election's key; the holder is the leader, its fencing
token is the leadership *term*, and its value (e.g. its address) is readable by anyone through
``leader()`` and ``observe()``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, final

from .._names import check_name
from .._types import Holder
from ..errors import AcquireTimeoutError, NotHeldError, NotLeaderError
from . import _compat
from .backends.base import Driver
from .lock import UNSET, AsyncLock, _Unset

if TYPE_CHECKING:
    from .session import AsyncSession

__all__ = ["AsyncElection"]

log = logging.getLogger("tenure")


@final
class AsyncElection:
    """A leader election on ``name``. Make one with ``Client.election`` or ``Session.election``.

    ``campaign()`` blocks until this candidate leads (``with election:`` does too, and resigns on
    exit); ``lost`` is set the moment leadership can no longer be trusted; ``term`` is the fencing
    token of this leadership.
    """

    def __init__(
        self,
        get_session: Callable[[float | None], Awaitable[AsyncSession]],
        driver: Driver,
        name: str,
        *,
        value: str | None,
        timeout: float | None,
    ) -> None:
        self.name = check_name(name, what="election name")
        if value is not None and not isinstance(value, str):
            raise TypeError(f"election value must be a str or None, not {type(value).__name__}")
        self._driver = driver
        self._lock = AsyncLock(
            get_session,
            driver,
            name,
            timeout=timeout,
            reentrant=False,
            kind="election",
            value=value,
        )
        self.value = value

    def __repr__(self) -> str:
        return f"<Election {self.name!r} {'leader' if self.is_leader else 'candidate'}>"

    @property
    def lost(self) -> _compat.Event:
        """Set the moment leadership can no longer be trusted."""
        return self._lock.lost

    @property
    def is_leader(self) -> bool:
        """Whether this candidate leads now (held by this object, in this process, not lost)."""
        return self._lock.held

    @property
    def term(self) -> int:
        """The fencing token of this leadership (``NotLeaderError`` if not leading)."""
        try:
            return self._lock.token
        except NotHeldError as exc:
            raise NotLeaderError(f"not the leader of election {self.name!r}: {exc}") from exc

    async def campaign(self, timeout: float | _Unset | None = UNSET) -> bool:
        """Wait until this candidate is the leader; False if ``timeout`` passes first."""
        if not await self._lock.acquire(timeout=timeout):
            return False
        grant = self._lock._grant
        if grant is not None:
            log.info(
                "tenure: election %r: leader now (term %d, owner %s)",
                self.name,
                grant.token,
                grant.owner.owner,
            )
        return True

    async def resign(self) -> None:
        """Give up leadership (``NotLeaderError`` if not leading)."""
        grant = self._lock._grant
        try:
            await self._lock.release()
        except NotHeldError as exc:
            raise NotLeaderError(f"not the leader of election {self.name!r}: {exc}") from exc
        if grant is not None:
            log.info(
                "tenure: election %r: resigned (term %d, owner %s)",
                self.name,
                grant.token,
                grant.owner.owner,
            )

    async def proclaim(self, value: str) -> None:
        """Change the leader's value without giving up leadership."""
        try:
            grant = self._lock._current()
        except NotHeldError as exc:
            raise NotLeaderError(f"not the leader of election {self.name!r}: {exc}") from exc
        if not await self._driver.set_value(grant, value):
            self._lock._set_lost("the leadership entry was deleted or taken")
            raise NotLeaderError(f"lost the leadership of election {self.name!r}")
        self.value = value

    async def leader(self) -> Holder | None:
        """The current leader (with its value and term as ``token``), from any client."""
        return await self._driver.holder(self._lock._key)

    async def candidates(self) -> list[Holder]:
        """The leader first, then the standbys in the order they would take over."""
        return await self._driver.contenders(self._lock._key)

    async def observe(self) -> AsyncIterator[Holder]:
        """Yield the leader now (if any) and each new leader (or new value) as it changes."""
        last: tuple[str, int, str | None] | None = None
        async for _ in self._driver.changes(self._lock._key):
            current = await self.leader()
            if current is None:
                continue
            ident = (current.owner, current.token, current.value)
            if ident != last:
                last = ident
                yield current

    def on_lost(self, callback: Callable[[AsyncElection], object]) -> None:
        """Call ``callback(election)`` when leadership is lost."""
        self._lock.on_lost(lambda _lock: callback(self))

    async def __aenter__(self) -> AsyncElection:
        if not await self.campaign():
            raise AcquireTimeoutError(
                f"did not become leader of election {self.name!r} in time", name=self.name
            )
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        await self._lock.__aexit__(exc_type, *rest)
