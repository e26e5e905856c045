"""Retry strategies for transient backend errors (the seeds' ``RetryStrategy``).

A strategy says how long to wait before attempt ``n`` (counting from 1), or ``None`` to give up.
The core always stops at the caller's deadline, whatever the strategy says.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from .errors import ConfigurationError

__all__ = ["ExponentialRetry", "FixedRetry", "NoRetry", "RetryStrategy"]


class RetryStrategy(Protocol):
    def delay(self, attempt: int) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1, 2, ...), or None to give up."""
        ...


@dataclass(frozen=True, slots=True)
class NoRetry:
    """Fail on the first error."""

    def delay(self, attempt: int) -> float | None:
        return None


@dataclass(frozen=True, slots=True)
class FixedRetry:
    """Wait ``interval`` seconds between attempts, at most ``max_attempts`` retries (None: any)."""

    interval: float = 0.1
    max_attempts: int | None = 10

    def __post_init__(self) -> None:
        if self.interval < 0:
            raise ConfigurationError(f"retry interval must be >= 0, got {self.interval}")

    def delay(self, attempt: int) -> float | None:
        if self.max_attempts is not None and attempt > self.max_attempts:
            return None
        return self.interval


@dataclass(frozen=True, slots=True)
class ExponentialRetry:
    """Exponential back-off with jitter: a random delay in ``[c/2, c]``.

    ``c = min(cap, base * 2**(n-1))`` for retry ``n``.

    ``max_attempts=None`` retries until the deadline (the default for renewals).
    """

    base: float = 0.05
    cap: float = 2.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ConfigurationError(
                f"exponential retry needs 0 < base <= cap, got base={self.base} cap={self.cap}"
            )

    def delay(self, attempt: int) -> float | None:
        if self.max_attempts is not None and attempt > self.max_attempts:
            return None
        ceiling = min(self.cap, self.base * 2 ** min(attempt - 1, 32))
        return random.uniform(ceiling / 2, ceiling)
