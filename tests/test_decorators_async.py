"""Locks as decorators (asyncio; the sync twin ``test_decorators_sync.py`` is generated).

``@lock`` runs each call of the function while holding the lock, as ``lock.run`` does. When the
lock cannot be had within its ``timeout`` the call raises ``AcquireTimeoutError`` (``timeout=0``:
it is busy now), or returns None without running if the lock was made with
``skip_if_busy=True``. On the file backend (no server): the behaviour is the core's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# tenure: sync import tenure as aio
from tenure import aio  # tenure: async-only
from tenure.errors import AcquireTimeoutError


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[aio.Client, aio.Client]]:
    url = f"file://{tmp_path / 'locks'}"
    a, b = await aio.connect(url), await aio.connect(url)
    yield a, b
    await a.close()
    await b.close()


async def test_a_decorated_function_runs_holding_the_lock(
    pair: tuple[aio.Client, aio.Client],
) -> None:
    a, b = pair
    nightly = a.lock("reports/nightly", timeout=0)
    seen: list[tuple[bool, bool]] = []

    @nightly
    async def report(day: str, *, pages: int) -> str:
        """Write the report."""
        seen.append((nightly.held, await b.lock("reports/nightly").acquire(blocking=False)))
        return f"{day}: {pages} pages"

    assert report.__name__ == "report"
    assert report.__doc__ == "Write the report."
    assert await report("mon", pages=3) == "mon: 3 pages"
    assert await report("tue", pages=4) == "tue: 4 pages"  # released in between
    assert seen == [(True, False), (True, False)]
    assert not nightly.held
    assert not await nightly.locked()


async def test_busy_raises_by_default_and_skips_with_skip_if_busy(
    pair: tuple[aio.Client, aio.Client],
) -> None:
    a, b = pair
    calls: list[str] = []

    @a.lock("reports/nightly", timeout=0)
    async def strict() -> str:
        calls.append("strict")
        return "ran"

    @a.lock("reports/nightly", timeout=0, skip_if_busy=True)
    async def lenient() -> str:
        calls.append("lenient")
        return "ran"

    async with b.lock("reports/nightly"):
        with pytest.raises(AcquireTimeoutError):
            await strict()
        assert await lenient() is None
    assert calls == []
    assert await strict() == "ran"
    assert await lenient() == "ran"
    assert calls == ["strict", "lenient"]


async def test_rwlock_sides_and_semaphores_decorate_too(
    pair: tuple[aio.Client, aio.Client],
) -> None:
    a, b = pair
    rw = a.rwlock("catalog", timeout=0, skip_if_busy=True)

    @rw.read
    async def serve() -> int:
        return rw.read.token

    @rw.write
    async def rebuild() -> int:
        return rw.write.token

    other = b.rwlock("catalog")
    async with other.read:
        assert (await serve() or 0) > 0  # readers share
        assert await rebuild() is None  # a reader holds it: skipped
    assert (await rebuild() or 0) > 0
    sem = a.semaphore("gpu", limit=1, timeout=0)

    @sem
    async def train() -> str:
        return "trained"

    async with b.semaphore("gpu", limit=1):
        with pytest.raises(AcquireTimeoutError):
            await train()
    assert await train() == "trained"


async def test_an_exception_releases_the_lock(pair: tuple[aio.Client, aio.Client]) -> None:
    a, b = pair

    @a.lock("job", timeout=0)
    async def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await fails()
    assert await b.lock("job").acquire(blocking=False)


# tenure: begin async-only
async def test_an_aio_lock_refuses_a_plain_function(pair: tuple[aio.Client, aio.Client]) -> None:
    def plain() -> None:
        pass

    with pytest.raises(TypeError, match="async def"):
        pair[0].lock("job")(plain)  # type: ignore[arg-type]


# tenure: end async-only
# tenure: begin sync-only
# def test_a_sync_lock_refuses_a_coroutine_function(pair: tuple[aio.Client, aio.Client]) -> None:
#     import asyncio
#
#     with pytest.raises(TypeError, match="coroutine function"):
#         pair[0].lock("job")(asyncio.sleep)
# tenure: end sync-only
