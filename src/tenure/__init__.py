"""tenure: distributed locks and leader election, one API on every backend.

Synchronous API (``from tenure import aio`` for asyncio)::

    import tenure

    with tenure.connect("redis://127.0.0.1:6379") as client:
        with client.lock("reports/nightly", ttl=30) as lock:
            write(resource, fence=lock.token)

``connect(url=None)`` takes the URL from ``$TENURE_URL`` when none is given, else uses the
embedded file backend in the user's state directory.
"""

from __future__ import annotations

from typing import Any

from ._retry import ExponentialRetry, FixedRetry, NoRetry, RetryStrategy
from ._sync.client import Client
from ._sync.election import Election
from ._sync.lock import Lock
from ._sync.rwlock import RWLock, Semaphore
from ._sync.session import Session
from ._types import Capabilities, Holder
from .errors import (
    AcquireTimeoutError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    ElectionError,
    LockError,
    LockLostError,
    NotHeldError,
    NotLeaderError,
    TenureError,
)

__all__ = [
    "AcquireTimeoutError",
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "Capabilities",
    "Client",
    "ConfigurationError",
    "Election",
    "ElectionError",
    "ExponentialRetry",
    "FixedRetry",
    "Holder",
    "Lock",
    "LockError",
    "LockLostError",
    "NoRetry",
    "NotHeldError",
    "NotLeaderError",
    "RWLock",
    "RetryStrategy",
    "Semaphore",
    "Session",
    "TenureError",
    "__version__",
    "connect",
]

__version__ = "0.1.0"


def connect(
    url: str | None = None, *, retry: RetryStrategy | None = None, **options: Any
) -> Client:
    """Connect to the backend at ``url`` and return a :class:`Client` (use it with ``with``).

    ``url=None`` reads ``$TENURE_URL``, else uses the embedded file backend. Options: ``ttl``,
    ``namespace``, ``timeout``, ``retry`` and the backend's own (also as the URL's query string).
    Raises ``ConfigurationError`` (bad URL, unknown scheme or option, missing extra) and
    ``BackendUnavailableError`` (server unreachable; the message names it without password).
    """
    client = Client(url, retry=retry, **options)
    try:
        client.open()
    except BaseException:
        client.close()
        raise
    return client
