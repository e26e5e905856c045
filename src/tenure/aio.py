"""The asyncio API: the same names as :mod:`tenure`, awaitable.

::

    from tenure import aio

    async with aio.connect("etcd://127.0.0.1:2379") as client:
        async with client.lock("reports/nightly") as lock:
            await write(resource, fence=lock.token)

``aio.connect()`` returns a client that connects when awaited (``client = await aio.connect()``)
or entered (``async with``). Background work runs as tasks on the running event loop.
"""

from __future__ import annotations

from typing import Any

from ._async.client import AsyncClient as Client
from ._async.election import AsyncElection as Election
from ._async.lock import AsyncLock as Lock
from ._async.rwlock import AsyncRWLock as RWLock
from ._async.rwlock import AsyncSemaphore as Semaphore
from ._async.session import AsyncSession as Session
from ._retry import ExponentialRetry, FixedRetry, NoRetry, RetryStrategy
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
    "connect",
]


def connect(
    url: str | None = None, *, retry: RetryStrategy | None = None, **options: Any
) -> Client:
    """Like :func:`tenure.connect`; await the result or use it with ``async with``."""
    return Client(url, retry=retry, **options)
