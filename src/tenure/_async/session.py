"""A session: one lease, kept alive in the background, that the locks made from it live in.

Keep-alive renews at TTL/3 with jitter, one ``renew_lease`` call for all the session's locks. A
failed renewal is retried until the local deadline; the deadline is measured from *before* the
last successful renewal was sent (minus a drift allowance), so ``lost`` fires before the server
can give the lock to anyone else. An alarm, not the renewing task, fires at the deadline, so a
renewal stuck in the network cannot delay ``lost``.
"""

from __future__ import annotations

import logging
import random
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar, final

from .._metrics import metrics_for
from .._names import OwnerInfo, current_pid
from .._retry import ExponentialRetry, RetryStrategy
from ..errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    LockLostError,
)
from . import _compat
from .backends.base import DRIFT, Driver, Grant, Lease, LeaseExpired, Mode
from .election import AsyncElection
from .lock import AsyncLock, SessionLock, call_quietly, refuse_min_hold
from .rwlock import AsyncRWLock, AsyncSemaphore

__all__ = ["AsyncSession"]

log = logging.getLogger("tenure")
T = TypeVar("T")

#: Renewal at TTL/3, less up to this share of it, so many sessions don't renew in step.
JITTER = 0.15


@final
class AsyncSession:
    """A lease kept alive in the background; ``lock()`` and ``election()`` live in it.

    ``lost`` is set when the lease can no longer be trusted; every lock held in the session is
    then lost too. ``close()`` releases everything the session holds and ends the lease.
    """

    def __init__(
        self,
        driver: Driver,
        ttl: float,
        *,
        retry: RetryStrategy,
        default_timeout: float | None = None,
    ) -> None:
        check_ttl(driver, ttl)
        self._driver = driver
        self.ttl = float(ttl)
        self._retry = retry
        self._default_timeout = default_timeout
        self.lost = _compat.Event()
        self._closed = _compat.Event()
        self._state = _compat.StateLock()
        self._open_gate = _compat.Gate()
        self._lease: Lease | None = None
        self._held: dict[Grant, SessionLock] = {}
        self._orphans: list[Grant] = []
        self._gates: dict[str, _compat.Gate] = {}
        self._deadline = 0.0
        self._alarm: _compat.Alarm | None = None
        self._keeper: _compat.Worker | None = None
        self._pid = current_pid()
        self._lost_reason = ""
        self._callbacks: list[Callable[[AsyncSession], object]] = []

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else "closed" if self._closed.is_set() else "open"
        lease = self._lease.id if self._lease else None
        return f"<Session {self._driver.scheme} ttl={self.ttl} lease={lease} {state}>"

    # Public API.

    def lock(
        self,
        name: str,
        *,
        timeout: float | None = None,
        reentrant: bool = False,
        min_hold: float | None = None,
        skip_if_busy: bool = False,
    ) -> AsyncLock:
        """A lock on ``name`` held in this session (see ``Client.lock``).

        ``timeout`` None takes the client's default wait, as ``Client.lock`` does.
        """
        return AsyncLock(
            self._use,
            self._driver,
            name,
            timeout=self._default_timeout if timeout is None else timeout,
            reentrant=reentrant,
            kind="lock",
            min_hold=min_hold,
            skip_if_busy=skip_if_busy,
        )

    def rwlock(
        self,
        name: str,
        *,
        timeout: float | None = None,
        min_hold: float | None = None,
        skip_if_busy: bool = False,
    ) -> AsyncRWLock:
        """A read-write lock on ``name`` held in this session (see ``Client.rwlock``)."""
        return AsyncRWLock(
            self._use,
            self._driver,
            name,
            timeout=self._default_timeout if timeout is None else timeout,
            min_hold=min_hold,
            skip_if_busy=skip_if_busy,
        )

    def semaphore(
        self,
        name: str,
        *,
        limit: int,
        timeout: float | None = None,
        min_hold: float | None = None,
        skip_if_busy: bool = False,
    ) -> AsyncSemaphore:
        """A semaphore on ``name`` held in this session (see ``Client.semaphore``)."""
        return AsyncSemaphore(
            self._use,
            self._driver,
            name,
            limit=limit,
            timeout=self._default_timeout if timeout is None else timeout,
            min_hold=min_hold,
            skip_if_busy=skip_if_busy,
        )

    def election(
        self,
        name: str,
        *,
        value: str | None = None,
        timeout: float | None = None,
        min_hold: float | None = None,
    ) -> AsyncElection:
        """A leader election on ``name`` in this session (see ``Client.election``).

        ``min_hold`` is refused (``ConfigurationError``): leadership is not a job run.
        """
        refuse_min_hold(min_hold)
        return AsyncElection(
            self._use,
            self._driver,
            name,
            value=value,
            timeout=self._default_timeout if timeout is None else timeout,
        )

    def on_lost(self, callback: Callable[[AsyncSession], object]) -> None:
        """Call ``callback(session)`` when the session is lost (at once if it already is)."""
        with self._state:
            if not self.lost.is_set():
                self._callbacks.append(callback)
                return
        call_quietly(callback, self)

    @property
    def closed(self) -> bool:
        """True once the session is closed, lost, or inherited by a forked child: unusable."""
        return self._closed.is_set() or self.lost.is_set() or current_pid() != self._pid

    @property
    def expires_in(self) -> float | None:
        """Seconds until the local deadline (None where the backend has no leases)."""
        if not self._driver.capabilities.leases or self._lease is None:
            return None
        return max(0.0, self._deadline - _compat.monotonic())

    async def close(self) -> None:
        """Release every lock held in the session and end its lease."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._alarm is not None:
            self._alarm.cancel()
        if self._lease is not None:
            self._lease.end()
        with self._state:
            held = list(self._held.items())
            self._held.clear()
        forked = current_pid() != self._pid
        for grant, lock in held:
            lock._session_ended(grant, "the session was closed")
        if self._lease is not None and not forked and not self.lost.is_set():
            try:
                for grant, _ in held:
                    await self._release_once(grant)
                await self._driver.revoke_lease(self._lease)
            except BackendError as exc:
                log.warning("tenure: closing session %s: %s (its lease will expire)", self, exc)
        if self._keeper is not None:
            await self._keeper.join(timeout=1.0)

    async def __aenter__(self) -> AsyncSession:
        await self._use()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Used by locks.

    async def _use(self, deadline: float | None = None) -> AsyncSession:
        """Open the lease on first use; raise LockLostError if the session is lost or closed.

        ``deadline`` (``monotonic()``; an acquire's) bounds the opening too: failed grants are
        retried until then, and then the last error is raised (``BackendError``).
        """
        if self.lost.is_set() or self._closed.is_set() or current_pid() != self._pid:
            raise LockLostError(
                f"session {self._lease.id if self._lease else ''} is "
                + ("lost: " + self._lost_reason if self.lost.is_set() else "closed"),
                name="",
            )
        if self._lease is None:
            wait = None if deadline is None else max(0.0, deadline - _compat.monotonic())
            if not await self._open_gate.acquire(wait):
                raise BackendTimeoutError(
                    f"{self._driver.scheme}: the session's lease was still being granted "
                    "(to another caller) when the deadline passed"
                )
            try:
                if self._lease is None:
                    await self._open(deadline)
            finally:
                self._open_gate.release()
        return self

    async def _open(self, deadline: float | None) -> None:
        sent = _compat.monotonic()
        lease = await self._retrying(lambda: self._driver.grant_lease(self.ttl), deadline)
        lease._on_expired = self._expire
        self._lease = lease
        self._deadline = sent + self.ttl * (1 - DRIFT)
        if self._driver.capabilities.leases:
            self._alarm = _compat.Alarm(self._on_alarm, name=f"tenure-deadline-{lease.id}")
            self._alarm.set(self._deadline)
        # Without leases (files) the keep-alive still checks that our entries are in place.
        self._keeper = _compat.spawn(
            _keep_alive_fn(weakref.ref(self)), name=f"tenure-keepalive-{lease.id}"
        )

    def _gate(self, key: str) -> _compat.Gate:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _compat.Gate()
        return gate

    async def _acquire(
        self, key: str, owner: OwnerInfo, deadline: float | None, mode: Mode
    ) -> Grant | None:
        """Ask the driver for ``key`` in ``mode``, retrying transient errors until ``deadline``."""
        lease = self._lease
        assert lease is not None

        async def attempt() -> Grant | None:
            if self.lost.is_set():  # lost between two attempts: no more round trips
                raise LockLostError(
                    f"the session ended while waiting for {key!r}: {self._lost_reason}",
                    name=key.partition("/")[2],
                )
            return await self._driver.acquire(lease, key, owner, deadline, mode)

        grant = await self._retrying(attempt, deadline=deadline)
        if grant is not None and self.lost.is_set():
            # The session ended while we were queued: this grant cannot be trusted.
            await self._release_quietly(grant)
            raise LockLostError(
                f"the session ended while waiting for {key!r}: {self._lost_reason}",
                name=key.partition("/")[2],
            )
        return grant

    def _track(self, grant: Grant, lock: SessionLock) -> None:
        grant._on_lost = lambda reason: self._grant_lost(grant, reason)
        with self._state:
            # The session may have been lost (or closed) since the driver granted: then the lock
            # is lost at once, never held untracked and unrenewed.
            if not (self.lost.is_set() or self._closed.is_set()):
                self._held[grant] = lock
                if grant.renew_by is not None and grant.renew_by < self._deadline:
                    self._deadline = grant.renew_by
                    if self._alarm is not None:
                        self._alarm.set(self._deadline)
                return
            reason = self._lost_reason or "the session was closed"
        lock._session_ended(grant, reason)

    def _holds(self, key: str, owner: object) -> bool:
        """Whether ``owner`` (a thread or task of this process) holds ``key`` in this session."""
        with self._state:
            return any(g.key == key and lock._owner == owner for g, lock in self._held.items())

    def _untrack(self, grant: Grant) -> None:
        with self._state:
            self._held.pop(grant, None)

    async def _release(self, grant: Grant) -> bool:
        """Release one entry; on a backend failure, leave it to the keep-alive to retry."""
        self._untrack(grant)
        try:
            return await self._retrying(lambda: self._release_once(grant), deadline=None)
        except BackendError:
            with self._state:
                self._orphans.append(grant)
            raise

    async def _release_once(self, grant: Grant) -> bool:
        """One release attempt, with the rule every backend shares: a retried release whose
        first reply was lost, and which now finds nothing, counts as released (the first attempt
        deleted the entry; a driver's release is owner-checked, so it deleted nobody else's)."""
        retried, grant.release_sent = grant.release_sent, True
        return await self._driver.release(grant) or retried

    async def _release_quietly(self, grant: Grant) -> None:
        try:
            await self._release(grant)
        except BackendError as exc:
            log.warning("tenure: releasing %r failed: %s; will retry", grant, exc)

    async def _retrying(self, call: Callable[[], Awaitable[T]], deadline: float | None) -> T:
        attempt = 0
        while True:
            try:
                return await call()
            except (BackendUnavailableError, BackendTimeoutError) as exc:
                attempt += 1
                delay = self._retry.delay(attempt)
                now = _compat.monotonic()
                if delay is None or (deadline is not None and now + delay >= deadline):
                    raise
                log.debug("tenure: %s; retry %d in %.3f s", exc, attempt, delay)
                await _compat.sleep(delay)

    # Keep-alive and loss.

    def _on_alarm(self) -> None:
        if self._closed.is_set() or self.lost.is_set():
            return
        if _compat.monotonic() >= self._deadline:
            self._expire("no renewal succeeded before the local deadline")
        elif self._alarm is not None:
            self._alarm.set(self._deadline)

    async def _renew(self) -> bool:
        """One renewal, retried until the deadline. False when the session is over."""
        lease = self._lease
        assert lease is not None
        backoff = ExponentialRetry(base=0.05, cap=max(0.05, self.ttl / 10))
        attempt = 0
        while not (self._closed.is_set() or self.lost.is_set()):
            sent = _compat.monotonic()
            remaining = self._deadline - sent if self._driver.capabilities.leases else self.ttl
            if remaining <= 0:
                self._expire("no renewal succeeded before the local deadline")
                return False
            with self._state:
                grants = list(self._held)
            try:
                gone = await self._driver.renew_lease(
                    lease, grants, timeout=min(remaining, self.ttl / 3)
                )
            except LeaseExpired as exc:
                _renewed(self._driver, None)
                self._expire(f"the server says the lease is gone ({exc})")
                return False
            except BackendError as exc:
                _renewed(self._driver, None)
                attempt += 1
                delay = min(backoff.delay(attempt) or 0.05, max(0.0, remaining))
                log.warning("tenure: renewing %s failed: %s; retrying", self, exc)
                await self._closed.wait(delay)
                continue
            _renewed(self._driver, _compat.monotonic() - sent)
            if self.lost.is_set():
                return False
            deadline = sent + self.ttl * (1 - DRIFT)
            with self._state:
                # Entries granted during this renewal were not in it: keep their own limits.
                renewed = set(grants)
                for grant in self._held:
                    if grant not in renewed and grant.renew_by is not None:
                        deadline = min(deadline, grant.renew_by)
                self._deadline = deadline
            if self._alarm is not None:
                self._alarm.set(self._deadline)
            for grant in gone:
                self._grant_lost(grant, "the entry was deleted or taken")
            await self._retry_orphans()
            return True
        return False

    async def _retry_orphans(self) -> None:
        with self._state:
            orphans, self._orphans = self._orphans, []
        for grant in orphans:
            try:
                await self._release_once(grant)
            except BackendError:
                with self._state:
                    self._orphans.append(grant)

    def _interval(self) -> float:
        return self.ttl / 3 * (1 - random.uniform(0, JITTER))

    def _grant_lost(self, grant: Grant, reason: str) -> None:
        with self._state:
            lock = self._held.pop(grant, None)
        if lock is not None:
            lock._session_ended(grant, reason)

    def _expire(self, reason: str) -> None:
        with self._state:
            if self.lost.is_set():
                return
            self._lost_reason = reason
            self.lost.set()
            held = list(self._held.items())
            self._held.clear()
            callbacks, self._callbacks = self._callbacks, []
        if self._alarm is not None:
            self._alarm.cancel()
        if self._lease is not None:
            self._lease.end()
        log.warning("tenure: session %s lost (%d grant(s) in it): %s", self, len(held), reason)
        for grant, lock in held:
            lock._session_ended(grant, reason)
        for callback in callbacks:
            call_quietly(callback, self)


def _renewed(driver: Driver, seconds: float | None) -> None:
    """Tell the client's metrics (if it has any) how long a renewal took (None: it failed)."""
    metrics = metrics_for(driver)
    if metrics is not None:
        metrics.renewed(seconds)


def check_ttl(driver: Driver, ttl: float) -> None:
    """Refuse a TTL the backend cannot honour (never change it silently)."""
    caps = driver.capabilities
    if caps.leases and ttl < caps.min_ttl:
        raise ConfigurationError(
            f"ttl {ttl} s is below the {driver.scheme} backend's minimum of {caps.min_ttl} s"
        )
    if ttl <= 0:
        raise ConfigurationError(f"ttl must be > 0 seconds, got {ttl}")


def _keep_alive_fn(ref: weakref.ref[AsyncSession]) -> Callable[[], Awaitable[None]]:
    """The keep-alive loop; it holds the session only weakly, so a forgotten session ends."""

    async def keep_alive() -> None:
        while True:
            session = ref()
            if session is None:
                return
            closed, interval = session._closed, session._interval()
            del session
            if await closed.wait(interval):
                return
            session = ref()
            if session is None or not await session._renew():
                return
            del session

    return keep_alive
