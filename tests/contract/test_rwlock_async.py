"""The rwlock contract, run against every backend in ``BACKENDS`` (asyncio; the sync twin
``test_rwlock_sync.py`` is generated from this file). Multi-process proofs (readers overlap,
the mixed counter, killed readers) are in ``test_shared_processes.py``."""

from __future__ import annotations

import asyncio  # tenure: async-only

# tenure: sync import threading
from collections.abc import Awaitable, Callable

import pytest

from tenure import aio
from tenure.errors import ConfigurationError, LockError, NotHeldError

from .backends import Backend
from .runners import AsyncRunner

Clients = Callable[..., Awaitable[aio.Client]]


async def _queued(rw: aio.RWLock, n: int) -> None:
    async def reached() -> bool:
        return len(await rw.contenders()) == n

    await AsyncRunner.wait_for(reached, 10)


async def test_readers_share_and_report_their_mode(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    first, second = a.rwlock("catalog"), b.rwlock("catalog")
    assert await first.read.acquire()
    assert await second.read.acquire(blocking=False)
    assert first.read.held
    assert second.read.held
    assert first.read.token != second.read.token
    holders = await first.holders()
    assert sorted(h.token for h in holders) == sorted([first.read.token, second.read.token])
    assert {h.mode for h in holders} == {"shared"}
    assert not any(h.waiting for h in holders)
    assert all(h.name == "catalog" for h in holders)
    await first.read.release()
    await second.read.release()
    assert await first.holders() == []


async def test_writer_excludes_readers_and_writers(aclients: Clients) -> None:
    a, b, c = await aclients(), await aclients(), await aclients()
    reader, writer, other = a.rwlock("w"), b.rwlock("w"), c.rwlock("w")
    assert await reader.read.acquire()
    assert not await writer.write.acquire(blocking=False)
    assert await reader.write.locked()
    assert not await reader.read.locked()
    await reader.read.release()
    assert await writer.write.acquire(blocking=False)
    holders = await writer.holders()
    assert [(h.mode, h.token) for h in holders] == [("exclusive", writer.write.token)]
    assert not await other.read.acquire(blocking=False)
    assert not await other.write.acquire(blocking=False)
    assert await other.read.locked()
    assert await other.write.locked()
    await writer.write.release()
    assert not await other.write.locked()


async def test_tokens_fence_writes_and_reads(aclients: Clients) -> None:
    """A writer's token exceeds every token granted before it; a reader's exceeds every earlier
    writer's."""
    a, b = await aclients(), await aclients()
    granted: list[tuple[str, int]] = []
    for i in range(4):
        rw = (a if i % 2 else b).rwlock("fence")
        async with rw.write:
            granted.append(("w", rw.write.token))
        r1, r2 = a.rwlock("fence"), b.rwlock("fence")
        assert await r1.read.acquire()
        assert await r2.read.acquire()
        granted += [("r", r1.read.token), ("r", r2.read.token)]
        await r1.read.release()
        await r2.read.release()
    for i, (kind, token) in enumerate(granted):
        before = granted[:i]
        if kind == "w":
            assert all(token > t for _, t in before), granted
        else:
            assert all(token > t for k, t in before if k == "w"), granted


async def test_reader_arriving_after_a_waiting_writer_waits_behind_it(
    aclients: Clients, backend: Backend
) -> None:
    if not backend.capabilities.fifo:
        pytest.skip(f"{backend.name}: grants across processes are not FIFO by design")
    a, b, c = await aclients(), await aclients(), await aclients()
    first, writer, late = a.rwlock("order"), b.rwlock("order"), c.rwlock("order")
    assert await first.read.acquire()
    order: list[str] = []
    runner = AsyncRunner()

    async def write() -> None:
        assert await writer.write.acquire(timeout=30)
        order.append("writer")
        assert not late.read.held  # the late reader is still queued behind us
        await writer.write.release()

    async def read() -> None:
        assert await late.read.acquire(timeout=30)
        order.append("late reader")
        await late.read.release()

    runner.start(write)
    await _queued(first, 2)
    runner.start(read)
    await _queued(first, 3)
    contenders = await first.contenders()
    assert [(h.mode, h.waiting) for h in contenders] == [
        ("shared", False),
        ("exclusive", True),
        ("shared", True),
    ]
    assert not late.read.held
    await first.read.release()
    await runner.join()
    assert order == ["writer", "late reader"]


async def test_a_release_grants_the_run_of_readers_at_the_head(
    aclients: Clients, backend: Backend
) -> None:
    a = await aclients()
    writer = a.rwlock("run")
    assert await writer.write.acquire()
    readers = [(await aclients()).rwlock("run") for _ in range(3)]
    inside = 0
    all_in = asyncio.Event()  # tenure: async-only
    # tenure: sync all_in = threading.Event()
    runner = AsyncRunner()
    for rw in readers:

        async def read(rw: aio.RWLock = rw) -> None:
            nonlocal inside
            assert await rw.read.acquire(timeout=30)
            inside += 1
            if inside == len(readers):
                all_in.set()
            # Every reader stays in until all are in: they hold the read side together.
            await asyncio.wait_for(all_in.wait(), 30)  # tenure: async-only
            # tenure: sync assert all_in.wait(30)
            await rw.read.release()

        runner.start(read)
    await _queued(writer, 4)
    if backend.capabilities.fifo:
        later = (await aclients()).rwlock("run")
        runner.start(lambda: _write_once(later))
        await _queued(writer, 5)
    await writer.write.release()
    await runner.join()
    assert inside == len(readers)


async def _write_once(rw: aio.RWLock) -> None:
    assert await rw.write.acquire(timeout=30)
    await rw.write.release()


async def test_asking_for_the_other_side_while_holding_one_is_refused(aclients: Clients) -> None:
    client = await aclients()
    rw = client.rwlock("upgrade")
    assert await rw.read.acquire()
    with pytest.raises(LockError, match="no upgrade"):
        await rw.write.acquire(timeout=5)
    with pytest.raises(LockError, match="no upgrade"):
        await client.rwlock("upgrade").write.acquire(blocking=False)
    with pytest.raises(LockError):
        await rw.read.acquire(timeout=5)  # one object holds one grant
    await rw.read.release()
    assert await rw.write.acquire()
    with pytest.raises(LockError, match="no upgrade"):
        await rw.read.acquire(timeout=5)  # nor downgrade
    await rw.write.release()
    assert await client.rwlock("upgrade").holders() == []


async def test_timed_out_readers_and_writers_leave_nothing_behind(aclients: Clients) -> None:
    a, b, c = await aclients(), await aclients(), await aclients()
    writer = a.rwlock("gone")
    assert await writer.write.acquire()
    assert not await b.rwlock("gone").read.acquire(timeout=0.2)
    assert not await b.rwlock("gone").write.acquire(timeout=0.2)
    assert len(await writer.contenders()) == 1
    await writer.write.release()
    assert await writer.read.acquire()
    assert not await c.rwlock("gone").write.acquire(timeout=0.2)
    assert len(await writer.contenders()) == 1
    third = c.rwlock("gone")
    assert await third.read.acquire(blocking=False)  # nobody left in the way
    await third.read.release()
    await writer.read.release()


# tenure: begin async-only
async def test_cancelled_writer_leaves_nothing_behind(aclients: Clients) -> None:
    a, b, c = await aclients(), await aclients(), await aclients()
    reader = a.rwlock("cancel")
    assert await reader.read.acquire()
    waiter = asyncio.ensure_future(b.rwlock("cancel").write.acquire())
    await _queued(reader, 2)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(await reader.contenders()) == 1
    late = c.rwlock("cancel")
    assert await late.read.acquire(blocking=False)  # no writer left in the way
    await late.read.release()
    await reader.read.release()


# tenure: end async-only
async def test_key_spaces_do_not_collide(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    async with a.lock("same"):
        rw = b.rwlock("same")
        assert await rw.write.acquire(blocking=False)
        sem = b.semaphore("same", limit=1)
        assert await sem.acquire(blocking=False)
        election = b.election("same")
        assert await election.campaign(timeout=0)
        await election.resign()
        await sem.release()
        await rw.write.release()


async def test_run_release_and_lost_work_per_side(aclients: Clients) -> None:
    client = await aclients()
    rw = client.rwlock("run-side")

    async def work(x: int) -> int:
        assert rw.read.held
        await rw.read.ensure_held()
        return x * 2

    assert await rw.read.run(work, 21) == 42
    assert not rw.read.held
    with pytest.raises(NotHeldError):
        await rw.write.release()
    async with rw.write as side:
        assert side is rw.write
        assert not side.lost.is_set()


async def test_session_rwlock_is_released_by_close(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    session = a.session()
    rw = session.rwlock("closing")
    assert await rw.write.acquire()
    await session.close()
    assert rw.write.lost.is_set()
    other = b.rwlock("closing")
    assert await other.write.acquire(blocking=False)
    await other.write.release()


async def test_bad_rwlock_names_are_rejected(aclients: Clients) -> None:
    client = await aclients()
    for bad in ["", "/abs", "a/../b"]:
        with pytest.raises(ConfigurationError):
            client.rwlock(bad)
    with pytest.raises(ConfigurationError, match="timeout"):
        client.rwlock("ok", timeout=-1)
