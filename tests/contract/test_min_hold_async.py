"""The ``min_hold`` contract (ShedLock's ``lockAtLeastFor``), run against every backend in
``BACKENDS`` (asyncio; the sync twin ``test_min_hold_sync.py`` is generated from this file).

A release earlier than ``min_hold`` after the grant keeps the entry until grant + min_hold, so no
other contender is granted before then (measured soundly: the grant came after the holder's
acquire was sent, and a contender's grant before its reply); it is granted soon after (within
the backend's ``hold_slack``); a release after ``min_hold`` frees at once; ``holder()`` shows the
ended holder, marked ``ended``. Holds are short (0.3-0.4 s) to keep the suite fast.
"""

from __future__ import annotations

import asyncio  # tenure: async-only
import math
import time
from collections.abc import Awaitable, Callable

import pytest

from tenure import aio
from tenure.errors import ConfigurationError

from .backends import Backend
from .runners import AsyncRunner

Clients = Callable[..., Awaitable[aio.Client]]

HOLD = 0.4


def _supports(backend: Backend) -> None:
    if not backend.capabilities.min_hold:
        pytest.fail(f"{backend.name}: min_hold is not supported (capabilities.min_hold False)")


def _soon(backend: Backend) -> float:
    """How long after grant + min_hold the next contender must be granted by (2 s for a loaded
    machine: a hold that ends at a waiter's next periodic look, TTL/3 or the 4.5 s BLPOP, fails)."""
    return 2.0 + backend.capabilities.hold_slack + backend.capabilities.expiry_slack


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)  # tenure: async-only
    # tenure: sync time.sleep(seconds)


async def test_an_early_release_keeps_the_lock_until_min_hold(
    backend: Backend, aclients: Clients
) -> None:
    _supports(backend)
    a, b, c = await aclients(), await aclients(), await aclients()
    job = a.lock("nightly", min_hold=HOLD)
    assert job.min_hold == HOLD
    sent = time.monotonic()
    assert await job.acquire()
    granted = time.monotonic()
    token = job.token
    # A waiter queued before the release...
    waiter = b.lock("nightly")
    runner = AsyncRunner()
    runner.start(lambda: waiter.acquire(timeout=HOLD + _soon(backend) + 5))

    async def queued() -> bool:
        return len(await c.contenders("nightly")) == 2

    await AsyncRunner.wait_for(queued, 10)
    await job.release()  # at once: far earlier than min_hold
    assert not job.held
    # ... and a contender arriving after it are not granted before grant + min_hold.
    assert not await c.lock("nightly").acquire(blocking=False)
    found = await c.holder("nightly")
    assert found is not None
    assert found.ended
    assert found.token == token
    assert not found.waiting
    if found.expires_in is not None:
        assert found.expires_in <= HOLD + backend.capabilities.hold_slack + 0.5
    assert await a.lock("nightly").locked()
    assert await runner.join() == [True]
    woken = time.monotonic()
    assert woken - sent >= HOLD, f"granted {woken - sent:.3f} s after the holder's grant"
    assert woken - granted <= HOLD + _soon(backend), f"granted only after {woken - granted:.3f} s"
    assert waiter.token > token
    found = await c.holder("nightly")
    assert found is not None
    assert not found.ended
    assert found.token == waiter.token
    await waiter.release()


async def test_a_release_after_min_hold_frees_at_once(aclients: Clients, backend: Backend) -> None:
    _supports(backend)
    a, b = await aclients(), await aclients()
    early = a.lock("early", min_hold=0.2)
    sent = time.monotonic()
    async with early:  # a hold kept with nobody waiting: over by itself
        pass
    job = a.lock("late", min_hold=0.2)
    async with job:
        await _sleep(0.25)
    other = b.lock("late")
    assert await other.acquire(blocking=False)
    assert other.token > 0
    await other.release()
    # min_hold=0 (or None) is a plain lock.
    plain = a.lock("late", min_hold=0)
    async with plain:
        pass
    assert await other.acquire(blocking=False)
    await other.release()

    async def over() -> bool:
        return await b.holder("early") is None

    await AsyncRunner.wait_for(over, 0.2 + _soon(backend) + 1)
    assert time.monotonic() - sent >= 0.2
    assert not await b.lock("early").locked()
    assert await b.lock("early").acquire(blocking=False)


async def test_min_hold_on_rwlocks_and_semaphores(aclients: Clients, backend: Backend) -> None:
    _supports(backend)
    a, b = await aclients(), await aclients()
    # Three holds at once (one wait for all): a writer released early keeps readers and writers
    # out; a reader released early keeps writers out, not readers; a permit released early
    # still counts against the limit.
    writer = a.rwlock("written", min_hold=0.3).write
    reader = a.rwlock("read", min_hold=0.3).read
    sem = a.semaphore("gpu", limit=2, min_hold=0.3)
    sent = time.monotonic()
    for lock in (writer, reader, sem):
        async with lock:
            pass
    after_writer, after_reader = b.rwlock("written"), b.rwlock("read")
    assert not await after_writer.read.acquire(blocking=False)
    [ended] = await after_writer.holders()
    assert ended.ended
    assert ended.mode == "exclusive"
    assert await after_reader.read.acquire(blocking=False)  # readers share
    await after_reader.read.release()
    assert not await after_reader.write.acquire(blocking=False)
    one, two = b.semaphore("gpu", limit=2), b.semaphore("gpu", limit=2)
    assert await one.acquire(blocking=False)
    assert not await two.acquire(blocking=False)
    assert sorted(h.ended for h in await one.holders()) == [False, True]
    wait = 0.3 + _soon(backend) + 5
    for waiter in (after_writer.read, after_reader.write, two):
        assert await waiter.acquire(timeout=wait)
        assert time.monotonic() - sent >= 0.3
        await waiter.release()
    await one.release()


async def test_min_hold_bad_input(aclients: Clients) -> None:
    client = await aclients()
    for bad in (-1, -0.001, "60", True, math.nan, math.inf, [1]):
        with pytest.raises(ConfigurationError, match="min_hold"):
            client.lock("x", min_hold=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="min_hold"):
            client.rwlock("x", min_hold=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="min_hold"):
            client.semaphore("x", limit=2, min_hold=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not for elections"):
        client.election("leader", min_hold=5)
    session = client.session()
    with pytest.raises(ConfigurationError, match="min_hold"):
        session.lock("x", min_hold=-5)
    with pytest.raises(ConfigurationError, match="not for elections"):
        session.election("leader", min_hold=0)
    assert session.lock("x", min_hold=1).min_hold == 1.0
    assert client.lock("x").min_hold == 0.0
