"""``Lock``: a named distributed lock held in a session's lease.

The flow of ``acquire``: the process-local FIFO gate for the name (so the threads or tasks of one
process that wait for one name make a single backend contender), then the driver's ``acquire``
with the remaining time. ``release`` goes the other way. A lost lock sets ``lost``, runs the
``on_lost`` callbacks and opens the local gate; ``release``/``token``/``ensure_held`` then raise
``LockLostError``.

The Lock <-> Session interface is declared here, in two Protocols: :class:`LockSession` (what a
lock uses of its session) and :class:`SessionLock` (what a session uses of the locks it tracks).
``Election`` is built on a Lock and also uses its ``_key``, ``_current()`` and ``_set_lost()``;
nothing else reaches into either class.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final, ParamSpec, Protocol, TypeVar

from .._metrics import measured_acquire, measured_loss, measured_release, probe_for
from .._names import OwnerInfo, check_name, current_pid, new_owner_id
from ..errors import AcquireTimeoutError, ConfigurationError, LockError, LockLostError, NotHeldError
from . import _compat
from .backends.base import EXCLUSIVE, Driver, Grant, Mode

__all__ = ["AsyncLock", "LockSession", "SessionLock"]

log = logging.getLogger("tenure")
T = TypeVar("T")
P = ParamSpec("P")


class _Unset:
    def __repr__(self) -> str:
        return "<default>"


UNSET: Final = _Unset()


def check_timeout(timeout: float | None, what: str = "timeout") -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigurationError(f"{what} must be a number of seconds or None, not {timeout!r}")
    if timeout < 0:
        raise ConfigurationError(f"{what} must be >= 0 seconds or None, got {timeout}")
    return float(timeout)


def check_min_hold(min_hold: object, driver: Driver | None = None) -> float:
    """``min_hold``: None or a finite number of seconds >= 0 (else ``ConfigurationError``);
    refused on a backend that cannot keep a released entry."""
    if min_hold is None:
        return 0.0
    if isinstance(min_hold, bool) or not isinstance(min_hold, int | float):
        raise ConfigurationError(f"min_hold must be a number of seconds or None, not {min_hold!r}")
    if not math.isfinite(min_hold) or min_hold < 0:
        raise ConfigurationError(f"min_hold must be >= 0 seconds (and finite), got {min_hold}")
    if min_hold and driver is not None and not driver.capabilities.min_hold:
        raise ConfigurationError(f"min_hold is not supported on {driver.scheme}:// yet")
    return float(min_hold)


def refuse_min_hold(min_hold: object) -> None:
    """Elections take no ``min_hold``: leadership is not a job run."""
    if min_hold is not None:
        raise ConfigurationError(
            "min_hold is for locks, rwlocks and semaphores (a job run once), not for elections: "
            "leadership is not a job run"
        )


class LockSession(Protocol):
    """What a lock uses of its session (``AsyncSession`` implements it)."""

    lost: _compat.Event
    _lost_reason: str

    def _gate(self, key: str) -> _compat.Gate:
        """The process-local FIFO gate of ``key`` (one backend contender per process)."""
        ...

    def _holds(self, key: str, owner: object) -> bool:
        """Whether ``owner`` (a thread or task) holds ``key`` in this session."""
        ...

    async def _acquire(
        self, key: str, owner: OwnerInfo, deadline: float | None, mode: Mode
    ) -> Grant | None:
        """The driver's acquire, retried on transient errors until ``deadline``."""
        ...

    def _track(self, grant: Grant, lock: SessionLock) -> None:
        """Renew ``grant`` with the session from now on; tell ``lock`` when it is lost."""
        ...

    async def _release(self, grant: Grant) -> bool:
        """Release (untracked from now on); False if the entry was found deleted or taken."""
        ...

    async def _release_quietly(self, grant: Grant) -> None:
        """Release, logging backend errors instead of raising them."""
        ...


class SessionLock(Protocol):
    """What a session uses of the locks it tracks (``AsyncLock`` implements it)."""

    #: The thread (task) that holds the lock, for the rwlock's no-upgrade check.
    _owner: object

    def _session_ended(self, grant: Grant, reason: str) -> None:
        """``grant``'s lease or entry is gone: the lock is lost (if ``grant`` is current)."""
        ...


class AsyncLock:
    """A distributed lock on ``name``. Make one with ``Client.lock`` or ``Session.lock``.

    ``acquire`` blocks until the lock is held (or ``timeout`` passes); ``with lock:`` does the same
    and raises ``AcquireTimeoutError`` instead of returning False. ``token`` is the fencing token:
    strictly increasing across successive holders of the name. ``lost`` is set the moment the lock
    can no longer be trusted; it is cleared when the lock is acquired again.

    ``min_hold`` (seconds): a release earlier than that after the grant keeps the entry on the
    server until then, so nobody else gets the lock meanwhile (a job run once across replicas).
    The lock is also a decorator (``@client.lock(name, timeout=0)``): each call of the function
    runs while holding it, as ``run()`` does; when the lock cannot be had in time the call raises
    ``AcquireTimeoutError``, or returns None without running if the lock was made with
    ``skip_if_busy=True``.
    """

    def __init__(
        self,
        get_session: Callable[[float | None], Awaitable[LockSession]],
        driver: Driver,
        name: str,
        *,
        timeout: float | None,
        reentrant: bool,
        kind: str,
        value: str | None = None,
        mode: Mode = EXCLUSIVE,
        min_hold: float | None = None,
        skip_if_busy: bool = False,
    ) -> None:
        self.name = check_name(name)
        self._skip_if_busy = bool(skip_if_busy)
        #: Seconds after the grant before which a release keeps the entry (0: frees at once).
        self.min_hold = check_min_hold(min_hold, driver)
        self._kind = kind
        self._mode = mode
        self._key = f"{kind}/{name}"
        self._get_session = get_session
        self._driver = driver
        self._timeout = check_timeout(timeout)
        self._reentrant = bool(reentrant)
        self._value = value
        self._state = _compat.StateLock()
        self._grant: Grant | None = None
        self._session: LockSession | None = None
        self._gate_held = False
        # Exclusive contenders of one process share the session's gate per key (one backend
        # contender); shared ones (readers, permits) must not serialise each other, so each
        # object has its own gate: one grant per object, waiters on one object in FIFO order.
        self._own_gate = _compat.Gate() if mode.shared else None
        self._owner: object = None
        self._count = 0
        self._pid = 0
        self._lost_reason: str | None = None
        self.lost = _compat.Event()
        self._callbacks: list[Callable[[AsyncLock], object]] = []
        # Metrics (None: not measured), and the grant measured as held with its time.
        self._probe = probe_for(driver, kind, mode.name, name)
        self._measured: tuple[Grant, float] | None = None

    def __repr__(self) -> str:
        state = "held" if self.held else "lost" if self._lost_reason is not None else "free"
        return f"<Lock {self.name!r} {state}>"

    # Acquiring.

    @measured_acquire
    async def acquire(self, blocking: bool = True, timeout: float | _Unset | None = UNSET) -> bool:
        """Wait until the lock is held; return False if ``timeout`` passes first.

        ``blocking=False`` tries once and never waits. ``timeout=None`` waits forever; the default
        is the lock's own ``timeout``. Raises ``LockError`` if this thread (task) holds it already
        and the lock is not reentrant, ``LockLostError`` if the session ended while waiting, and
        ``BackendError`` subclasses for backend failures that outlast the retry strategy.
        """
        me = _compat.current_owner()
        with self._state:
            if self._grant is not None and self._pid == current_pid() and self._owner == me:
                if self._lost_reason is None and self._reentrant:
                    self._count += 1
                    return True
                if self._lost_reason is None:
                    raise LockError(
                        f"lock {self.name!r} is already held by this "
                        f"{_owner_kind()}; pass reentrant=True to acquire it again",
                        name=self.name,
                    )
        wait = 0.0 if not blocking else self._timeout if isinstance(timeout, _Unset) else timeout
        wait = check_timeout(wait)
        deadline = None if wait is None else _compat.monotonic() + wait
        session = await self._get_session(deadline)  # opening its lease counts too
        if self._kind == "rwlock" and session._holds(self._key, me):
            raise LockError(
                f"rwlock {self.name!r}: this {_owner_kind()} holds it already; asking for the "
                f"{'read' if self._mode.shared else 'write'} side too would wait for itself "
                "(no upgrade or downgrade: release first)",
                name=self.name,
            )
        gate = self._gate(session)
        if not await gate.acquire(_remaining(deadline)):
            return False
        try:
            owner = OwnerInfo(new_owner_id(), self._value)
            grant = await session._acquire(self._key, owner, deadline, self._mode)
        except BaseException:
            gate.release()
            raise
        if grant is None:
            gate.release()
            return False
        if self.min_hold:
            # From the grant's reply, which came after the server granted: never too short.
            grant.keep_until = _compat.monotonic() + self.min_hold
        with self._state:
            if self._grant is not None and self._lost_reason is not None:
                self._forget()  # a lost tenure nobody released: drop it
            self._grant, self._session, self._gate_held = grant, session, True
            self._owner, self._count, self._pid = me, 1, current_pid()
            self._lost_reason = None
            self.lost.clear()
        session._track(grant, self)
        return True

    async def try_acquire(self) -> bool:
        """Try once, never wait (etcd's TryLock): ``acquire(blocking=False)``."""
        return await self.acquire(blocking=False)

    async def __aenter__(self) -> AsyncLock:
        if not await self.acquire():
            raise AcquireTimeoutError(
                f"could not acquire lock {self.name!r} within {self._timeout} s", name=self.name
            )
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            await self.release()
            return
        try:
            await self.release()
        except NotHeldError as exc:  # don't hide the body's own exception
            log.warning("tenure: %s", exc)

    # Releasing.

    @measured_release
    async def release(self) -> None:
        """Release the lock (owner-checked: it never deletes another holder's entry).

        Raises ``NotHeldError`` if this object does not hold it (also when released twice, or in a
        forked child), ``LockLostError`` if it was lost meanwhile.
        """
        with self._state:
            grant, session = self._grant, self._session
            if grant is None or session is None or self._pid != current_pid():
                raise NotHeldError(f"lock {self.name!r} is not held by this object", name=self.name)
            if self._reentrant and self._owner != _compat.current_owner():
                raise NotHeldError(
                    f"lock {self.name!r} is held by another {_owner_kind()}", name=self.name
                )
            if self._count > 1 and self._lost_reason is None:
                self._count -= 1
                return
            lost_reason = self._lost_reason
            gate_held = self._gate_held
            self._forget()
        if lost_reason is not None:
            await session._release_quietly(grant)  # clean up whatever of ours may be left
            raise LockLostError(f"lock {self.name!r} was lost: {lost_reason}", name=self.name)
        try:
            ours = await session._release(grant)
        finally:
            if gate_held:
                self._gate(session).release()
        if not ours:
            self._set_lost("the entry was deleted or taken before release")
            raise LockLostError(
                f"lock {self.name!r} was no longer held when released (deleted or taken)",
                name=self.name,
            )

    def _gate(self, session: LockSession) -> _compat.Gate:
        return self._own_gate if self._own_gate is not None else session._gate(self._key)

    def _forget(self) -> None:
        self._grant = self._session = None
        self._gate_held = False
        self._owner, self._count = None, 0

    # State.

    @property
    def held(self) -> bool:
        """Held by this object, in this process, and not lost."""
        return self._grant is not None and self._lost_reason is None and self._pid == current_pid()

    @property
    def token(self) -> int:
        """The fencing token of the current tenure (``NotHeldError``/``LockLostError`` if none)."""
        return self._current().token

    async def locked(self) -> bool:
        """Whether an acquire now would have to wait for a holder (asks the backend).

        For a lock: whether anyone holds it. For an rwlock's write side: whether anyone holds
        either side; for its read side: whether a writer holds it. For a semaphore: whether all
        its permits are taken. (Queued waiters are not counted.)
        """
        if self._kind in ("lock", "election"):
            return await self._driver.holder(self._key) is not None
        holders = [h for h in await self._driver.contenders(self._key) if not h.waiting]
        if not self._mode.shared:
            return bool(holders)
        if self._mode.limit:
            return len(holders) >= self._mode.limit
        return any(h.mode == "exclusive" for h in holders)

    async def ensure_held(self) -> None:
        """Raise ``LockLostError`` unless the lock is still held (asks the backend once)."""
        grant = self._current()
        session = self._session
        assert session is not None
        if session.lost.is_set() or not await self._driver.check(grant):
            self._set_lost(session._lost_reason or "the entry was deleted or taken")
            self._current()

    def on_lost(self, callback: Callable[[AsyncLock], object]) -> None:
        """Call ``callback(lock)`` when the lock is lost (at once if the current tenure is lost).

        Callbacks run in the keep-alive thread (sync) or on the event loop (asyncio): keep them
        short and non-blocking.
        """
        with self._state:
            if self._lost_reason is None:
                self._callbacks.append(callback)
                return
        call_quietly(callback, self)

    def _current(self) -> Grant:
        with self._state:
            grant = self._grant
            if grant is None or self._pid != current_pid():
                raise NotHeldError(f"lock {self.name!r} is not held by this object", name=self.name)
            if self._lost_reason is not None:
                raise LockLostError(
                    f"lock {self.name!r} was lost: {self._lost_reason}", name=self.name
                )
            return grant

    def _session_ended(self, grant: Grant, reason: str) -> None:
        """Called by the session when ``grant``'s lease or entry is gone."""
        with self._state:
            if self._grant is not grant:
                return
        self._set_lost(reason)

    @measured_loss
    def _set_lost(self, reason: str) -> None:
        with self._state:
            if self._lost_reason is not None:
                return
            self._lost_reason = reason
            callbacks = list(self._callbacks)
            gate_held, self._gate_held = self._gate_held, False
            session = self._session
        self.lost.set()
        if gate_held and session is not None:
            self._gate(session).release()  # local waiters may contend again
        grant = self._grant
        log.warning(
            "tenure: %s %r lost (token %s, owner %s): %s",
            self._kind,
            self.name,
            grant.token if grant is not None else "-",
            grant.owner.owner if grant is not None else "-",
            reason,
        )
        for callback in callbacks:
            call_quietly(callback, self)

    # Running work under the lock.

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Acquire, run ``fn(*args, **kwargs)``, release; return its result.

        If the lock is lost meanwhile, the work is cancelled (asyncio) or told through ``lost``
        (sync: it runs to its end) and ``LockLostError`` is raised, with ``.result`` set to what
        the callable returned. ``AcquireTimeoutError`` if the lock cannot be had in time.
        """
        await self.__aenter__()
        return await self._run_held(fn, args, kwargs)

    async def _run_held(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        """``run``'s body, the lock being held: run, release, raise ``LockLostError`` if lost."""
        try:
            result, _lost = await _compat.run_until_lost(self.lost, fn, args, kwargs)
        except BaseException:
            await self.__aexit__(BaseException)
            raise
        try:
            await self.release()
        except LockLostError as exc:
            exc.result = result
            raise
        return result  # type: ignore[return-value]  # None only when lost, which raised above

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T | None]]:
        """Decorate ``fn`` so that each call runs while holding the lock (as ``run`` does).

        When the lock cannot be had within its ``timeout`` (``timeout=0``: it is busy now), the
        call raises ``AcquireTimeoutError``, or, for a lock made with ``skip_if_busy=True``,
        returns None without running ``fn``. ``LockLostError`` if the lock is lost while ``fn``
        runs (asyncio: ``fn`` is cancelled). An ``aio`` lock decorates ``async def`` functions,
        a sync lock plain ones (``TypeError`` otherwise).
        """
        # tenure: begin async-only
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"an aio lock decorates coroutine functions (async def), not {fn!r}; "
                "use a lock of tenure.connect() for a plain function"
            )
        # tenure: end async-only
        # tenure: begin sync-only
        # if inspect.iscoroutinefunction(fn):
        #     raise TypeError(
        #         f"a sync lock decorates plain functions, not the coroutine function {fn!r}; "
        #         "use a lock of tenure.aio.connect() for it"
        #     )
        # tenure: end sync-only

        @functools.wraps(fn)
        async def locked(*args: P.args, **kwargs: P.kwargs) -> T | None:
            if not await self.acquire():
                if self._skip_if_busy:
                    log.info("tenure: %s %r is busy: %s skipped", self._kind, self.name, fn)
                    return None
                raise AcquireTimeoutError(
                    f"could not acquire lock {self.name!r} within {self._timeout} s",
                    name=self.name,
                )
            return await self._run_held(fn, args, kwargs)

        return locked


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - _compat.monotonic())


def _owner_kind() -> str:
    return "task"  # tenure: async-only
    # tenure: sync return "thread"


def call_quietly(callback: Callable[..., object], arg: object) -> None:
    """Run an ``on_lost`` callback; log, never raise, what it raises."""
    try:
        callback(arg)
    except Exception:
        log.exception("tenure: on_lost callback %r failed", callback)
