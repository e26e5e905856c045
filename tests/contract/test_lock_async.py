"""The lock contract, run against every backend in ``BACKENDS`` (asyncio; the sync twin
``test_lock_sync.py`` is generated from this file)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import pytest

from tenure import aio
from tenure.errors import (
    AcquireTimeoutError,
    ConfigurationError,
    LockError,
    LockLostError,
    NotHeldError,
)

from .backends import Backend
from .runners import AsyncRunner

Clients = Callable[..., Awaitable[aio.Client]]


async def test_acquire_release_and_holder(aclients: Clients) -> None:
    client = await aclients()
    lock = client.lock("reports/nightly")
    assert not lock.held
    assert await lock.acquire()
    assert lock.held
    assert lock.token > 0
    assert await lock.locked()
    holder = await client.holder("reports/nightly")
    assert holder is not None
    assert holder.pid == os.getpid()
    assert holder.token == lock.token
    assert holder.name == "reports/nightly"
    assert holder.acquired_at is not None
    assert holder.acquired_at.tzinfo is not None
    await lock.release()
    assert not lock.held
    assert not await lock.locked()
    assert await client.holder("reports/nightly") is None


async def test_context_manager_returns_the_lock(aclients: Clients) -> None:
    client = await aclients()
    async with client.lock("cm") as lock:
        assert lock.held
        token = lock.token
    assert not lock.held
    async with lock:
        assert lock.token > token


async def test_try_acquire_fails_at_once_when_held_elsewhere(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    held = a.lock("busy")
    assert await held.acquire()
    other = b.lock("busy")
    started = time.monotonic()
    assert not await other.acquire(blocking=False)
    assert not await other.try_acquire()
    assert not other.held
    assert time.monotonic() - started < 5.0  # "at once": no waiting for a timeout
    await held.release()
    assert await other.try_acquire()
    await other.release()


async def test_acquire_timeout_returns_false_after_the_timeout(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    held = a.lock("slow")
    assert await held.acquire()
    started = time.monotonic()
    assert not await b.lock("slow").acquire(timeout=0.5)
    waited = time.monotonic() - started
    assert waited >= 0.5
    assert waited < 10.0
    await held.release()


async def test_with_lock_raises_on_timeout_and_never_runs_the_body(aclients: Clients) -> None:
    a, b = await aclients(), await aclients(timeout=0.2)
    held = a.lock("guarded")
    assert await held.acquire()
    ran = False
    with pytest.raises(AcquireTimeoutError) as info:
        async with b.lock("guarded"):
            ran = True
    assert not ran
    assert info.value.name == "guarded"
    assert isinstance(info.value, TimeoutError)
    await held.release()


async def test_session_locks_take_the_clients_default_timeout(aclients: Clients) -> None:
    a, b = await aclients(), await aclients(timeout=0.2)
    held = a.lock("session-timeout")
    assert await held.acquire()
    with pytest.raises(AcquireTimeoutError):
        async with b.session().lock("session-timeout"):
            raise AssertionError("must not run")
    await held.release()


async def test_release_twice_and_unheld_raise_not_held(aclients: Clients) -> None:
    client = await aclients()
    lock = client.lock("twice")
    with pytest.raises(NotHeldError):
        await lock.release()
    with pytest.raises(NotHeldError):
        _ = lock.token
    with pytest.raises(NotHeldError):
        await lock.ensure_held()
    assert await lock.acquire()
    await lock.ensure_held()
    await lock.release()
    with pytest.raises(NotHeldError) as info:
        await lock.release()
    assert not isinstance(info.value, LockLostError)


async def test_tokens_strictly_increase_across_holders(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    tokens = []
    for i in range(10):
        lock = (a if i % 2 else b).lock("fenced")
        async with lock:
            tokens.append(lock.token)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)


async def test_waiter_is_woken_by_release(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    first = a.lock("handoff")
    assert await first.acquire()
    first_token = first.token
    second = b.lock("handoff")
    runner = AsyncRunner()
    runner.start(lambda: second.acquire(timeout=30))

    async def queued() -> bool:
        return len(await a.contenders("handoff")) == 2

    await runner.wait_for(queued, 10)
    contenders = await a.contenders("handoff")
    assert contenders[0].token == first_token
    await first.release()
    assert await runner.join() == [True]
    assert second.token > first_token
    await second.release()


async def test_a_waiter_whose_predecessor_gave_up_still_waits_for_the_holder(
    aclients: Clients,
) -> None:
    """The waiter ahead of another times out while the lock is held: the one behind must go on
    waiting (a backend that took its predecessor's leaving for a release would grant it now,
    with the holder still holding), and is granted at the release."""
    a, b, c = await aclients(), await aclients(), await aclients()
    holder, impatient, patient = a.lock("chain"), b.lock("chain"), c.lock("chain")
    assert await holder.acquire()
    first, second = AsyncRunner(), AsyncRunner()
    first.start(lambda: impatient.acquire(timeout=1.5))

    async def queued(n: int) -> bool:
        return len(await a.contenders("chain")) == n

    await first.wait_for(lambda: queued(2), 10)
    second.start(lambda: patient.acquire(timeout=30))
    await second.wait_for(lambda: queued(3), 10)
    assert await first.join() == [False]
    # Time enough for a wrongly woken waiter to take it:
    await asyncio.sleep(0.3)  # tenure: async-only
    # tenure: sync time.sleep(0.3)
    assert holder.held
    assert not patient.held
    assert [h.waiting for h in await a.contenders("chain")] == [False, True]
    token = holder.token
    await holder.release()
    assert await second.join() == [True]
    assert patient.token > token
    await patient.release()


async def test_local_waiters_are_served_in_fifo_order(aclients: Clients) -> None:
    client = await aclients()
    holder = client.lock("fifo")
    assert await holder.acquire()
    order: list[int] = []
    runner = AsyncRunner()

    def waiter(i: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            lock = client.lock("fifo")
            assert await lock.acquire(timeout=30)
            order.append(i)
            await lock.release()

        return run

    session = client._sessions[client.ttl]
    gate = session._gate("lock/fifo")
    for i in range(5):
        runner.start(waiter(i))

        async def queued(n: int = i + 1) -> bool:
            return len(gate._waiters) == n

        await runner.wait_for(queued, 10)
    await holder.release()
    await runner.join()
    assert order == [0, 1, 2, 3, 4]


async def test_remote_waiters_are_granted_in_arrival_order(
    aclients: Clients, backend: Backend
) -> None:
    if not backend.capabilities.fifo:
        pytest.skip(f"{backend.name}: grants across processes are not FIFO by design")
    holder_client = await aclients()
    holder = holder_client.lock("queue")
    assert await holder.acquire()
    order: list[int] = []
    runner = AsyncRunner()
    for i in range(4):
        client = await aclients()
        lock = client.lock("queue")

        async def wait(lock: aio.Lock = lock, i: int = i) -> None:
            assert await lock.acquire(timeout=30)
            order.append(i)
            await lock.release()

        runner.start(wait)

        async def queued(n: int = i + 2) -> bool:
            return len(await holder_client.contenders("queue")) == n

        await runner.wait_for(queued, 10)
    waiting = [h.owner for h in await holder_client.contenders("queue")][1:]
    assert len(set(waiting)) == 4
    await holder.release()
    await runner.join()
    assert order == [0, 1, 2, 3]


async def test_reentrant_lock_counts_acquisitions(aclients: Clients) -> None:
    client = await aclients()
    lock = client.lock("again", reentrant=True)
    assert await lock.acquire()
    token = lock.token
    assert await lock.acquire()
    assert lock.token == token
    await lock.release()
    assert lock.held
    assert await lock.locked()
    await lock.release()
    assert not lock.held
    assert not await lock.locked()


async def test_non_reentrant_lock_refuses_a_second_acquire_by_its_owner(aclients: Clients) -> None:
    client = await aclients()
    lock = client.lock("once")
    assert await lock.acquire()
    owner = "task"  # tenure: async-only
    # tenure: sync owner = "thread"
    with pytest.raises(LockError, match=f"held by this {owner}; pass reentrant=True"):
        await lock.acquire(timeout=0.1)
    await lock.release()


async def test_stolen_lock_is_reported_lost(aclients: Clients, backend: Backend) -> None:
    client = await aclients(ttl=backend.ttl)
    lock = client.lock("stolen")
    called: list[object] = []
    lock.on_lost(called.append)
    assert await lock.acquire()
    backend.steal("stolen")
    with pytest.raises(LockLostError):
        await lock.ensure_held()
    assert lock.lost.is_set()
    assert called == [lock]
    assert not lock.held
    with pytest.raises(LockLostError):
        _ = lock.token
    with pytest.raises(LockLostError):
        await lock.release()
    # The lock can be taken again, and lost is cleared for the new tenure.
    assert await lock.acquire(timeout=10)
    assert not lock.lost.is_set()
    await lock.release()


async def test_keep_alive_notices_a_stolen_lock(aclients: Clients, backend: Backend) -> None:
    client = await aclients(ttl=backend.ttl)
    lock = client.lock("watched")
    assert await lock.acquire()
    backend.steal("watched")
    assert await lock.lost.wait(10 * backend.ttl)
    with pytest.raises(LockLostError):
        await lock.release()


async def test_run_returns_the_result_and_releases(aclients: Clients) -> None:
    client = await aclients()
    lock = client.lock("job")

    async def work(x: int, *, y: int) -> int:
        assert lock.held
        return x + y

    assert await lock.run(work, 1, y=2) == 3
    assert not lock.held


async def test_run_stops_the_work_when_the_lock_is_lost(
    aclients: Clients, backend: Backend
) -> None:
    client = await aclients(ttl=backend.ttl)
    lock = client.lock("doomed")
    finished: list[str] = []

    async def work() -> str:
        backend.steal("doomed")
        # tenure: begin async-only
        await asyncio.sleep(60)  # cancelled when the keep-alive notices the loss
        # tenure: end async-only
        # tenure: sync assert lock.lost.wait(10 * backend.ttl)
        finished.append("done")
        return "done"

    with pytest.raises(LockLostError) as info:
        await lock.run(work)
    # tenure: begin async-only
    assert finished == []  # the task was cancelled
    assert info.value.result is None
    # tenure: end async-only
    # tenure: begin sync-only
    # assert finished == ["done"]  # a thread cannot be cancelled: it was told through `lost`
    # assert info.value.result == "done"
    # tenure: end sync-only
    assert not lock.held


async def test_run_raises_acquire_timeout(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    held = a.lock("taken")
    assert await held.acquire()
    lock = b.lock("taken", timeout=0.1)

    async def work() -> None:
        raise AssertionError("must not run")

    with pytest.raises(AcquireTimeoutError):
        await lock.run(work)
    await held.release()


async def test_bad_names_are_rejected(aclients: Clients) -> None:
    client = await aclients()
    for bad in ["", "/abs", "../x", "a/../b", "a//b", "x\x00y", "a/./b", "x" * 201, "tab\there"]:
        with pytest.raises(ConfigurationError):
            client.lock(bad)
    with pytest.raises(ConfigurationError):
        client.lock(123)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="timeout"):
        client.lock("ok", timeout=-1)


# tenure: begin async-only
async def test_cancelled_acquire_leaves_nothing_behind(aclients: Clients) -> None:
    a, b, c = await aclients(), await aclients(), await aclients()
    held = a.lock("cancel")
    assert await held.acquire()
    waiter = asyncio.ensure_future(b.lock("cancel").acquire())

    async def queued() -> bool:
        return len(await a.contenders("cancel")) == 2

    await AsyncRunner.wait_for(queued, 10)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(await a.contenders("cancel")) == 1
    await held.release()
    third = c.lock("cancel")
    assert await third.acquire(blocking=False)  # nobody left in the way
    await third.release()


# tenure: end async-only
async def test_timed_out_acquire_leaves_nothing_behind(aclients: Clients) -> None:
    a, b, c = await aclients(), await aclients(), await aclients()
    held = a.lock("gone")
    assert await held.acquire()
    assert not await b.lock("gone").acquire(timeout=0.2)
    assert len(await a.contenders("gone")) == 1
    await held.release()
    third = c.lock("gone")
    assert await third.acquire(blocking=False)
    await third.release()


async def test_session_close_releases_everything(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    session = a.session()
    locks = [session.lock(f"s/{i}") for i in range(3)]
    for lock in locks:
        assert await lock.acquire()
    await session.close()
    for lock in locks:
        assert not lock.held
        assert lock.lost.is_set()
    for i in range(3):
        other = b.lock(f"s/{i}")
        assert await other.acquire(blocking=False)
        await other.release()


async def test_two_names_do_not_interfere(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    async with a.lock("one"):
        other = b.lock("two")
        assert await other.acquire(blocking=False)
        await other.release()
