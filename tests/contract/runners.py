"""Run a few things concurrently: tasks for the async tests, threads for the sync twins.

The converter renames ``AsyncRunner`` to ``Runner`` in the generated sync tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any


class AsyncRunner:
    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[Any]] = []

    def start(self, fn: Callable[[], Awaitable[Any]]) -> asyncio.Task[Any]:
        async def main() -> Any:
            return await fn()

        task = asyncio.get_running_loop().create_task(main())
        self._tasks.append(task)
        return task

    async def join(self, timeout: float = 30.0) -> list[Any]:
        async with asyncio.timeout(timeout):
            return list(await asyncio.gather(*self._tasks))

    @staticmethod
    async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float) -> None:
        """Poll ``condition`` (cheaply, with back-off) until true; fail after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.001
        while not await condition():
            assert loop.time() < deadline, "condition not reached in time"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)


class Runner:
    def __init__(self) -> None:
        self._threads: list[tuple[threading.Thread, list[Any]]] = []

    def start(self, fn: Callable[[], Any]) -> threading.Thread:
        box: list[Any] = []

        def main() -> None:
            try:
                box.append(("ok", fn()))
            except BaseException as exc:
                box.append(("error", exc))

        thread = threading.Thread(target=main, daemon=True)
        self._threads.append((thread, box))
        thread.start()
        return thread

    def join(self, timeout: float = 30.0) -> list[Any]:
        results = []
        for thread, box in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "worker thread did not finish in time"
            kind, value = box[0]
            if kind == "error":
                raise value
            results.append(value)
        return results

    @staticmethod
    def wait_for(condition: Callable[[], bool], timeout: float) -> None:
        """Poll ``condition`` (cheaply, with back-off) until true; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        delay = 0.001
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in time"
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
