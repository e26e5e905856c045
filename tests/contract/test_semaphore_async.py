"""The semaphore contract, run against every backend in ``BACKENDS`` (asyncio; the sync twin
``test_semaphore_sync.py`` is generated from this file). Multi-process proofs (never more than
``limit`` inside, a killed holder's permit comes back) are in ``test_shared_processes.py``."""

from __future__ import annotations

import asyncio  # tenure: async-only

# tenure: sync import threading
from collections.abc import Awaitable, Callable

import pytest

from tenure import aio
from tenure.errors import ConfigurationError, LockError

from .backends import Backend
from .runners import AsyncRunner

Clients = Callable[..., Awaitable[aio.Client]]


async def _queued(sem: aio.Semaphore, n: int) -> None:
    async def reached() -> bool:
        return len(await sem.contenders()) == n

    await AsyncRunner.wait_for(reached, 10)


async def test_limit_permits_and_no_more(aclients: Clients) -> None:
    clients = [await aclients() for _ in range(3)]
    sems = [c.semaphore("gpu", limit=2) for c in clients]
    assert sems[0].limit == 2
    assert await sems[0].acquire()
    first_token = sems[0].token
    assert not await sems[0].locked()
    assert await sems[1].acquire(blocking=False)
    assert await sems[2].locked()
    assert not await sems[2].acquire(blocking=False)
    holders = await sems[2].holders()
    assert sorted(h.token for h in holders) == sorted(s.token for s in sems[:2])
    assert {h.mode for h in holders} == {"permit"}
    assert all(h.name == "gpu" and not h.waiting for h in holders)
    await sems[0].release()
    assert await sems[2].acquire(blocking=False)
    assert sems[2].token > max(first_token, sems[1].token)
    await sems[1].release()
    await sems[2].release()
    assert await sems[0].holders() == []


async def test_tokens_strictly_increase_across_permits(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    tokens: list[int] = []
    for i in range(6):
        sem = (a if i % 2 else b).semaphore("fenced", limit=3)
        async with sem:
            tokens.append(sem.token)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)


async def test_a_release_wakes_a_waiter(aclients: Clients) -> None:
    a, b, c = await aclients(), await aclients(), await aclients()
    one, two = a.semaphore("wake", limit=2), b.semaphore("wake", limit=2)
    assert await one.acquire()
    assert await two.acquire()
    waiter = c.semaphore("wake", limit=2)
    runner = AsyncRunner()
    runner.start(lambda: waiter.acquire(timeout=30))
    await _queued(one, 3)
    contenders = await one.contenders()
    assert [(h.mode, h.waiting) for h in contenders] == [
        ("permit", False),
        ("permit", False),
        ("permit", True),
    ]
    await one.release()
    assert await runner.join() == [True]
    assert waiter.token > two.token
    await waiter.release()
    await two.release()


async def test_waiters_are_granted_in_arrival_order(aclients: Clients, backend: Backend) -> None:
    if not backend.capabilities.fifo:
        pytest.skip(f"{backend.name}: grants across processes are not FIFO by design")
    a = await aclients()
    holder = a.semaphore("queue", limit=1)
    assert await holder.acquire()
    order: list[int] = []
    runner = AsyncRunner()
    for i in range(4):
        sem = (await aclients()).semaphore("queue", limit=1)

        async def wait(sem: aio.Semaphore = sem, i: int = i) -> None:
            assert await sem.acquire(timeout=30)
            order.append(i)
            await sem.release()

        runner.start(wait)
        await _queued(holder, i + 2)
    await holder.release()
    await runner.join()
    assert order == [0, 1, 2, 3]


async def test_a_different_limit_is_refused_while_in_use(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    held = a.semaphore("quota", limit=2)
    assert await held.acquire()
    other = b.semaphore("quota", limit=3)
    with pytest.raises(ConfigurationError) as info:
        await other.acquire(timeout=1)
    assert "2" in str(info.value)
    assert "3" in str(info.value)
    assert not other.held
    assert len(await held.contenders()) == 1  # the refused contender left nothing
    await held.release()
    assert await other.acquire(blocking=False)  # empty: the new limit is taken
    with pytest.raises(ConfigurationError):
        await a.semaphore("quota", limit=2).acquire(blocking=False)
    await other.release()


async def test_bad_limits_are_rejected(aclients: Clients) -> None:
    client = await aclients()
    for bad in [0, -1, 1.5, True, "2", None]:
        with pytest.raises(ConfigurationError, match="limit"):
            client.semaphore("bad", limit=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        client.semaphore("", limit=1)


async def test_permits_of_one_process_are_not_serialised(aclients: Clients) -> None:
    """Local coalescing must not queue permits: three objects of one client hold three permits
    at once."""
    client = await aclients()
    sems = [client.semaphore("local", limit=3) for _ in range(3)]
    inside = 0
    all_in = asyncio.Event()  # tenure: async-only
    # tenure: sync all_in = threading.Event()
    runner = AsyncRunner()
    for sem in sems:

        async def hold(sem: aio.Semaphore = sem) -> None:
            nonlocal inside
            assert await sem.acquire(timeout=30)
            inside += 1
            if inside == len(sems):
                all_in.set()
            await asyncio.wait_for(all_in.wait(), 30)  # tenure: async-only
            # tenure: sync assert all_in.wait(30)
            await sem.release()

        runner.start(hold)
    await runner.join()
    assert inside == 3


async def test_one_object_holds_one_permit(aclients: Clients) -> None:
    client = await aclients()
    sem = client.semaphore("one", limit=5)
    assert await sem.acquire()
    with pytest.raises(LockError):
        await sem.acquire(timeout=1)
    await sem.release()


async def test_timed_out_waiter_leaves_nothing_behind(aclients: Clients) -> None:
    a, b, c = await aclients(), await aclients(), await aclients()
    held = a.semaphore("gone", limit=1)
    assert await held.acquire()
    assert not await b.semaphore("gone", limit=1).acquire(timeout=0.2)
    assert len(await held.contenders()) == 1
    await held.release()
    third = c.semaphore("gone", limit=1)
    assert await third.acquire(blocking=False)
    await third.release()


# tenure: begin async-only
async def test_cancelled_waiter_leaves_nothing_behind(aclients: Clients) -> None:
    a, b, c = await aclients(), await aclients(), await aclients()
    held = a.semaphore("cancel", limit=1)
    assert await held.acquire()
    waiter = asyncio.ensure_future(b.semaphore("cancel", limit=1).acquire())
    await _queued(held, 2)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(await held.contenders()) == 1
    await held.release()
    third = c.semaphore("cancel", limit=1)
    assert await third.acquire(blocking=False)
    await third.release()


# tenure: end async-only
async def test_limit_one_is_a_mutex(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    async with a.semaphore("mutex", limit=1) as sem:
        assert sem.held
        assert not await b.semaphore("mutex", limit=1).acquire(blocking=False)
    assert await b.semaphore("mutex", limit=1).acquire(blocking=False)


async def test_session_semaphore_is_released_by_close(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    session = a.session()
    sem = session.semaphore("closing", limit=1)
    assert await sem.acquire()
    await session.close()
    assert sem.lost.is_set()
    other = b.semaphore("closing", limit=1)
    assert await other.acquire(blocking=False)
    await other.release()
