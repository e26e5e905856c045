"""Thread flavour of the few primitives the core needs (hand-written twin of ``_async/_compat.py``).

Same names, same behaviour: ``Event`` is a ``threading.Event``, ``Gate`` a FIFO mutex, a
``Worker`` a daemon thread, an ``Alarm`` a thread waiting for a deadline.
"""

from __future__ import annotations

import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "Alarm",
    "Event",
    "Gate",
    "StateLock",
    "Worker",
    "current_owner",
    "monotonic",
    "raise_if_cancelled",
    "run_until_lost",
    "sleep",
    "spawn",
    "thread_safe_caller",
    "wait_readable",
]

T = TypeVar("T")

monotonic = time.monotonic


class Event(threading.Event):
    """``threading.Event``: ``wait(timeout)`` returns whether it is set."""


class Gate:
    """A FIFO mutex with a timeout: the local queue of one process's waiters for one name.

    Ownership passes directly to the oldest waiter on release, so waiters are served in order
    (``threading.Lock`` makes no such promise).
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locked = False
        self._waiters: deque[list[Any]] = deque()  # [threading.Lock held until granted, granted]

    def acquire(self, timeout: float | None) -> bool:
        with self._mutex:
            if not self._locked and not self._waiters:
                self._locked = True
                return True
            if timeout is not None and timeout <= 0:
                return False
            signal = threading.Lock()
            signal.acquire()
            entry: list[Any] = [signal, False]
            self._waiters.append(entry)
        signal.acquire(timeout=-1 if timeout is None else timeout)
        with self._mutex:
            if entry[1]:
                return True
            self._waiters.remove(entry)
            return False

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                entry = self._waiters.popleft()
                entry[1] = True  # ownership moves to it; _locked stays True
                entry[0].release()
                return
            self._locked = False


#: Guards a few lines of state shared by user threads and the keep-alive thread (an ``RLock``
#: itself, not a wrapper: it is entered several times per acquire and release).
StateLock = threading.RLock


class Worker:
    """A background daemon thread (a task in asyncio code)."""

    def __init__(self, thread: threading.Thread) -> None:
        self._thread = thread

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


def spawn(fn: Callable[[], None], name: str) -> Worker:
    thread = threading.Thread(target=fn, name=name, daemon=True)
    thread.start()
    return Worker(thread)


class Alarm:
    """Calls ``callback`` once at a ``monotonic()`` deadline; the deadline can be moved."""

    def __init__(self, callback: Callable[[], None], name: str) -> None:
        self._callback = callback
        self._name = name
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None

    def set(self, deadline: float) -> None:
        with self._cond:
            self._deadline = deadline
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def cancel(self) -> None:
        with self._cond:
            self._deadline = None
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None:
                    self._thread = None
                    return
                remaining = self._deadline - monotonic()
                if remaining <= 0:
                    self._deadline = None
                    self._thread = None
                    break
                self._cond.wait(remaining)
        self._callback()


def sleep(seconds: float) -> None:
    time.sleep(max(0.0, seconds))


def current_owner() -> object:
    """The unit of ownership for reentrant locks: the current thread (a task in asyncio code)."""
    return threading.get_ident()


def thread_safe_caller() -> Callable[[Callable[[], None]], None]:
    """A function that runs a callback in this flavour's context, callable from any thread."""

    def call(fn: Callable[[], None]) -> None:
        fn()

    return call


def wait_readable(fd: int, timeout: float | None) -> bool:
    """Wait until ``fd`` is readable; False on timeout."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = None if timeout is None else monotonic() + timeout
    while True:
        ms = None if deadline is None else max(0, int((deadline - monotonic()) * 1000) + 1)
        if poller.poll(ms):
            return True
        if deadline is not None and monotonic() >= deadline:
            return False


def run_until_lost(
    lost: Event, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[T | None, bool]:
    """Run ``fn(*args, **kwargs)`` to the end (threads cannot be cancelled); report ``lost``."""
    result = fn(*args, **kwargs)
    return result, lost.is_set()


def monotonic_ns() -> int:
    return time.monotonic_ns()


def raise_if_cancelled() -> None:
    """Nothing to do in threads (the asyncio twin re-raises a lost cancellation)."""
