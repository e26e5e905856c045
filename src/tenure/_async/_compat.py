"""asyncio flavour of the few primitives the core needs.

``_sync/_compat.py`` is its hand-written thread twin with the same names; everything else under
``_async/`` is converted to ``_sync/`` by ``scripts/async_to_sync.py``. Keep the two files in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
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


class Event(asyncio.Event):
    """``asyncio.Event`` whose ``wait`` also takes a timeout and returns whether it is set."""

    async def wait(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        if self.is_set():
            return True
        if timeout is None:
            await super().wait()
            return True
        if timeout <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await super().wait()
        return self.is_set()


class Gate:
    """A FIFO mutex with a timeout: the local queue of one process's waiters for one name.

    Ownership passes directly to the oldest waiter on release, so waiters are served in order.
    """

    def __init__(self) -> None:
        self._locked = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, timeout: float | None) -> bool:
        if not self._locked and not self._waiters:
            self._locked = True
            return True
        if timeout is not None and timeout <= 0:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # it was handed to us as we gave up: pass it on
            else:
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                return False
            raise
        return True

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # ownership moves to it; _locked stays True
                return
        self._locked = False


class StateLock:
    """Guards a few lines of state. In asyncio nothing runs between awaits, so it is a no-op."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class Worker:
    """A background task (a thread in sync code)."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    async def join(self, timeout: float | None = None) -> None:
        if self._task is asyncio.current_task():
            return
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        if not done:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


def spawn(fn: Callable[[], Awaitable[None]], name: str) -> Worker:
    async def main() -> None:
        await fn()

    return Worker(asyncio.get_running_loop().create_task(main(), name=name))


class Alarm:
    """Calls ``callback`` once at a ``monotonic()`` deadline; the deadline can be moved."""

    def __init__(self, callback: Callable[[], None], name: str) -> None:
        self._callback = callback
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None

    def set(self, deadline: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        # loop.time() is time.monotonic() in asyncio's default loops.
        delay = deadline - monotonic()
        self._handle = self._loop.call_at(self._loop.time() + delay, self._callback)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def sleep(seconds: float) -> None:
    await asyncio.sleep(max(0.0, seconds))


def current_owner() -> object:
    """The unit of ownership for reentrant locks: the current task (a thread in sync code)."""
    return asyncio.current_task()


def thread_safe_caller() -> Callable[[Callable[[], None]], None]:
    """A function that runs a callback in this flavour's context, callable from any thread."""
    loop = asyncio.get_running_loop()

    def call(fn: Callable[[], None]) -> None:
        loop.call_soon_threadsafe(fn)

    return call


async def wait_readable(fd: int, timeout: float | None) -> bool:
    """Wait until ``fd`` is readable; False on timeout."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def on_ready() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_ready)
    try:
        async with asyncio.timeout(timeout):
            await ready
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
    return True


async def run_until_lost(
    lost: Event, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[T | None, bool]:
    """Run ``fn(*args, **kwargs)``; if ``lost`` is set first, cancel it.

    Returns ``(result, lost)``. In sync code the callable cannot be cancelled: it runs to the end
    and is told through ``lost``.
    """
    work = asyncio.ensure_future(fn(*args, **kwargs))
    watch = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if work.cancelled():
        return None, True
    return work.result(), lost.is_set()


def monotonic_ns() -> int:
    return time.monotonic_ns()


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if this task was asked to cancel and the request got lost.

    Python 3.11's ``asyncio.wait_for`` (which redis-py uses for socket writes) can swallow a
    cancellation that arrives as the inner call completes (fixed in 3.12); a waiter that then
    blocks again would never end. Drivers call this after each blocking wait.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
