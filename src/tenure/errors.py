"""The exceptions tenure raises.

Every error is a :class:`TenureError`; each also subclasses the builtin a caller would catch
without knowing tenure (``ValueError``, ``ConnectionError``, ``TimeoutError``)::

    TenureError
    ├─ ConfigurationError(ValueError)      bad URL, bad name, ttl below minimum, missing extra
    ├─ BackendError                        __cause__ is the client library's exception
    │  ├─ BackendUnavailableError(ConnectionError)
    │  └─ BackendTimeoutError(TimeoutError)
    ├─ LockError                           carries .name (and never a password)
    │  ├─ AcquireTimeoutError(TimeoutError)
    │  ├─ NotHeldError                     release()/token on a lock this object does not hold
    │  │  └─ LockLostError                 held, then the lease ended or the key was taken
    └─ ElectionError
       └─ NotLeaderError

Client-library exceptions are translated at one boundary per driver, with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "AcquireTimeoutError",
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "ConfigurationError",
    "ElectionError",
    "LockError",
    "LockLostError",
    "NotHeldError",
    "NotLeaderError",
    "TenureError",
]


class TenureError(Exception):
    """Base class of every error raised by tenure."""


class ConfigurationError(TenureError, ValueError):
    """A bad URL, name or option, a ttl the backend cannot honour, or a missing extra."""


class BackendError(TenureError):
    """The backend failed; ``__cause__`` holds the client library's exception."""


class BackendUnavailableError(BackendError, ConnectionError):
    """The backend could not be reached (the message names the address, never a password)."""


class BackendTimeoutError(BackendError, TimeoutError):
    """The backend did not answer in time."""


class LockError(TenureError):
    """An error about one lock; ``.name`` is the lock's name."""

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


class AcquireTimeoutError(LockError, TimeoutError):
    """``with lock:`` (or ``Lock.run``) could not get the lock before its timeout."""


class NotHeldError(LockError):
    """``release()``, ``token`` or ``ensure_held()`` on a lock this object does not hold."""


class LockLostError(NotHeldError):
    """The lock was held, and then the session ended or the entry was deleted or taken.

    ``result`` carries the callable's return value when raised by the sync ``Lock.run``.
    """

    result: object = None


class ElectionError(TenureError):
    """An error about a leader election."""


class NotLeaderError(ElectionError):
    """The operation needs leadership that this candidate does not (or no longer) hold."""
