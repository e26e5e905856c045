"""``Client``: a connection to one backend, with default sessions, locks and elections."""

from __future__ import annotations

import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, final

from .. import _metrics as metrics
from .._names import check_name, check_namespace
from .._registry import load_driver
from .._retry import ExponentialRetry, RetryStrategy
from .._types import Capabilities, Holder
from .._url import bool_option, parse_url
from ..errors import ConfigurationError
from . import _compat
from .backends.base import KINDS, Driver
from .election import AsyncElection
from .lock import AsyncLock, check_timeout, refuse_min_hold
from .rwlock import AsyncRWLock, AsyncSemaphore
from .session import AsyncSession, check_ttl

__all__ = ["DEFAULT_TTL", "AsyncClient"]

DEFAULT_TTL = 30.0
_CORE_OPTIONS = frozenset({"ttl", "namespace", "timeout", "metrics_names", "meter_provider"})
_FLAVOUR = __name__.split(".")[1]  # "_async" here, "_sync" in the generated twin
_CLIENTS: weakref.WeakSet[AsyncClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._driver.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


@final
class AsyncClient:
    """A connection to one backend. Use ``tenure.connect(url)`` (or ``aio.connect``).

    Options (keyword arguments, or the URL's query string; keywords win): ``ttl`` (default
    session lease, 30 s), ``namespace`` (prefix of every key, default ``tenure``), ``timeout``
    (default wait of ``acquire``/``with lock:``, default None: forever), ``retry`` (a
    ``RetryStrategy`` for transient backend errors; keyword only), ``metrics_names`` (put lock
    names on the OpenTelemetry metrics) and ``meter_provider`` (keyword only; default: the
    global one, if the application configured an SDK), plus the backend's own.
    """

    def __init__(
        self, url: str | None = None, *, retry: RetryStrategy | None = None, **options: Any
    ) -> None:
        parsed = parse_url(url)
        merged: dict[str, Any] = {**parsed.query, **options}
        self.ttl = _number(merged.pop("ttl", DEFAULT_TTL), "ttl")
        if self.ttl <= 0:
            raise ConfigurationError(f"ttl must be > 0 seconds, got {self.ttl}")
        self.namespace = check_namespace(merged.pop("namespace", "tenure"))
        timeout = merged.pop("timeout", None)
        self.timeout = check_timeout(None if timeout in (None, "") else _number(timeout, "timeout"))
        # Metrics (docs/observability.md): keyword options; metrics_names also in the URL.
        meter_provider = merged.pop("meter_provider", None)
        names = merged.pop("metrics_names", False)
        metrics_names = (
            names
            if isinstance(names, bool)
            else bool_option({"metrics_names": str(names)}, "metrics_names")
        )
        driver_cls = load_driver(parsed.scheme, _FLAVOUR)
        unknown = sorted(set(merged) - driver_cls.options)
        if unknown:
            accepted = sorted(_CORE_OPTIONS | driver_cls.options)
            raise ConfigurationError(
                f"unknown option(s) {', '.join(unknown)} for {parsed.scheme}://; "
                f"accepted: {', '.join(accepted)}"
            )
        self._driver: Driver = driver_cls(
            parsed, namespace=self.namespace, options={k: str(v) for k, v in merged.items()}
        )
        self.url = parsed.redacted()
        metrics.enable(
            self._driver, parsed.scheme, names=metrics_names, meter_provider=meter_provider
        )
        self._retry: RetryStrategy = retry or ExponentialRetry(base=0.05, cap=1.0, max_attempts=8)
        check_ttl(self._driver, self.ttl)  # fail at connect, not at the first acquire
        self._sessions: dict[float, AsyncSession] = {}
        self._all_sessions: weakref.WeakSet[AsyncSession] = weakref.WeakSet()
        self._open_gate = _compat.Gate()
        self._connected = False
        self._closed = False
        _CLIENTS.add(self)

    def __repr__(self) -> str:
        return f"<Client {self.url}>"

    @property
    def capabilities(self) -> Capabilities:
        """What this client's backend can do (leases, FIFO, minimum TTL...)."""
        return self._driver.capabilities

    async def open(self) -> AsyncClient:
        """Connect to the backend (``connect()`` does this for you)."""
        await self._open_gate.acquire(None)
        try:
            if not self._connected:
                await self._driver.connect()
                self._connected = True
        finally:
            self._open_gate.release()
        return self

    # tenure: begin async-only
    def __await__(self) -> Generator[Any, None, AsyncClient]:
        return self.open().__await__()

    # tenure: end async-only
    async def __aenter__(self) -> AsyncClient:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every session (releasing their locks) and the connection."""
        if self._closed:
            return
        self._closed = True
        for session in list(self._all_sessions):
            await session.close()
        self._sessions.clear()
        await self._driver.close()

    def session(self, ttl: float | None = None) -> AsyncSession:
        """A new session: a lease of ``ttl`` seconds kept alive in the background.

        The lease is created on first use (or ``with session:``); ``close()`` releases everything
        the session holds.
        """
        self._check_open()
        session = AsyncSession(
            self._driver,
            self.ttl if ttl is None else _number(ttl, "ttl"),
            retry=self._retry,
            default_timeout=self.timeout,
        )
        self._all_sessions.add(session)
        return session

    async def _default_session(self, ttl: float, deadline: float | None = None) -> AsyncSession:
        if not self._connected:
            await self.open()
        session = self._sessions.get(ttl)
        if session is None or session.closed:
            session = self._sessions[ttl] = self.session(ttl)
        return await session._use(deadline)

    def lock(
        self,
        name: str,
        *,
        ttl: float | None = None,
        timeout: float | None = None,
        reentrant: bool = False,
        min_hold: float | None = None,
        skip_if_busy: bool = False,
    ) -> AsyncLock:
        """A lock on ``name`` in the default session for ``ttl`` (default: the client's).

        ``timeout`` is the default wait of ``acquire()`` and ``with lock:`` (None: the client's
        default, which is to wait forever). ``min_hold`` (seconds): a release earlier than that
        after the grant keeps the lock taken on the server until then (ShedLock's
        ``lockAtLeastFor``; kept by the server's own expiry, even past the TTL and after this
        process exits). ``skip_if_busy``: the lock used as a decorator returns None instead of
        raising ``AcquireTimeoutError`` when it cannot be had in time. Raises
        ``ConfigurationError`` for a bad name or ``min_hold``.
        """
        self._check_open()
        lease_ttl = self.ttl if ttl is None else _number(ttl, "ttl")

        async def get_session(deadline: float | None = None) -> AsyncSession:
            return await self._default_session(lease_ttl, deadline)

        return AsyncLock(
            get_session,
            self._driver,
            name,
            timeout=self.timeout if timeout is None else timeout,
            reentrant=reentrant,
            kind="lock",
            min_hold=min_hold,
            skip_if_busy=skip_if_busy,
        )

    def rwlock(
        self,
        name: str,
        *,
        ttl: float | None = None,
        timeout: float | None = None,
        min_hold: float | None = None,
        skip_if_busy: bool = False,
    ) -> AsyncRWLock:
        """A read-write lock on ``name`` (its own key space): ``rw.read`` and ``rw.write`` are
        ``Lock`` objects. ``ttl``, ``timeout``, ``min_hold`` and ``skip_if_busy`` (each side's)
        as for ``lock()``. Raises ``ConfigurationError`` for a bad name."""
        return AsyncRWLock(
            self._session_getter(ttl),
            self._driver,
            name,
            timeout=self._timeout_or_default(timeout),
            min_hold=min_hold,
            skip_if_busy=skip_if_busy,
        )

    def semaphore(
        self,
        name: str,
        *,
        limit: int,
        ttl: float | None = None,
        timeout: float | None = None,
        min_hold: float | None = None,
        skip_if_busy: bool = False,
    ) -> AsyncSemaphore:
        """A semaphore on ``name`` (its own key space) with ``limit`` permits; the object holds
        at most one. ``ttl``, ``timeout``, ``min_hold`` and ``skip_if_busy`` as for ``lock()``.
        Raises ``ConfigurationError`` for a bad name or a limit that is not an int >= 1."""
        return AsyncSemaphore(
            self._session_getter(ttl),
            self._driver,
            name,
            limit=limit,
            timeout=self._timeout_or_default(timeout),
            min_hold=min_hold,
            skip_if_busy=skip_if_busy,
        )

    def election(
        self,
        name: str,
        *,
        value: str | None = None,
        ttl: float | None = None,
        timeout: float | None = None,
        min_hold: float | None = None,
    ) -> AsyncElection:
        """A leader election on ``name``; ``value`` (e.g. this host's address) is published.

        ``min_hold`` is refused (``ConfigurationError``): leadership is not a job run."""
        refuse_min_hold(min_hold)
        self._check_open()
        lease_ttl = self.ttl if ttl is None else _number(ttl, "ttl")

        async def get_session(deadline: float | None = None) -> AsyncSession:
            return await self._default_session(lease_ttl, deadline)

        return AsyncElection(
            get_session,
            self._driver,
            name,
            value=value,
            timeout=self.timeout if timeout is None else timeout,
        )

    async def holder(self, name: str, *, kind: str = "lock") -> Holder | None:
        """Who holds lock ``name`` now, or None (``kind``: ``"lock"``, ``"rwlock"``,
        ``"semaphore"`` or ``"election"``; for the shared kinds, the first holder)."""
        await self.open()
        return await self._driver.holder(_key(kind, name))

    async def contenders(self, name: str, *, kind: str = "lock") -> list[Holder]:
        """The holders of ``name`` first, then its waiters in grant order (``waiting=True``);
        ``kind`` as for ``holder``."""
        await self.open()
        return await self._driver.contenders(_key(kind, name))

    async def in_use(self) -> dict[str, list[Holder]]:
        """Every name of the namespace that has holders or waiters, as ``{"<kind>/<name>":
        contenders}`` (holders first, then waiters in grant order), sorted; ``{}`` for a
        namespace nobody uses. Raises ``BackendError`` subclasses."""
        await self.open()
        return dict(sorted((await self._driver.in_use()).items()))

    async def changes(self, name: str | None = None, *, kind: str = "lock") -> AsyncIterator[None]:
        """Yield once watching, then each time ``name``'s holders or waiters may have changed
        (``name=None``: anything in the namespace; etcd watches it, other backends yield every
        few seconds). For one name, every backend watches an election; Redis and PostgreSQL
        publish nothing for the other kinds (their releases stay one round trip), so a caller
        that follows one of those also looks again now and then, as ``tenure status --watch``
        does."""
        await self.open()
        if name is None:
            source = self._driver.namespace_changes()
        else:
            source = self._driver.changes(_key(kind, name))
        async for _ in source:
            yield

    def _session_getter(
        self, ttl: float | None
    ) -> Callable[[float | None], Awaitable[AsyncSession]]:
        self._check_open()
        lease_ttl = self.ttl if ttl is None else _number(ttl, "ttl")

        async def get_session(deadline: float | None = None) -> AsyncSession:
            return await self._default_session(lease_ttl, deadline)

        return get_session

    def _timeout_or_default(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError(f"client {self.url} is closed")


def _key(kind: str, name: str) -> str:
    if kind not in KINDS:
        raise ConfigurationError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return f"{kind}/{check_name(name)}"


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ConfigurationError(f"{what} must be a number of seconds, not {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what} must be a number of seconds, not {value!r}") from None
