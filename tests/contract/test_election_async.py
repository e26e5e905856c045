"""The election contract on every backend (asyncio; ``test_election_sync.py`` is generated)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tenure import Holder, aio
from tenure._async import _compat
from tenure.errors import AcquireTimeoutError, NotLeaderError

from .backends import Backend
from .runners import AsyncRunner

Clients = Callable[..., Awaitable[aio.Client]]


async def test_two_candidates_hand_over_in_order(aclients: Clients) -> None:
    a, b = await aclients(), await aclients()
    first = a.election("scheduler", value="host-a")
    second = b.election("scheduler", value="host-b")
    assert await first.campaign()
    assert first.is_leader
    term = first.term
    assert not await second.campaign(timeout=0.2)
    leader = await b.election("scheduler").leader()
    assert leader is not None
    assert leader.value == "host-a"
    assert leader.token == term
    runner = AsyncRunner()
    runner.start(lambda: second.campaign(timeout=30))

    async def queued() -> bool:
        return len(await a.contenders("scheduler", kind="election")) == 2

    await runner.wait_for(queued, 10)
    await first.resign()
    assert await runner.join() == [True]
    assert second.term > term
    leader = await a.election("scheduler").leader()
    assert leader is not None
    assert leader.value == "host-b"
    await second.resign()
    assert await a.election("scheduler").leader() is None


async def test_three_candidates_each_lead_once_with_rising_terms(
    aclients: Clients, backend: Backend
) -> None:
    clients = [await aclients() for _ in range(3)]
    elections = [c.election("trio", value=f"c{i}") for i, c in enumerate(clients)]
    assert await elections[0].campaign()
    order: list[str] = []
    terms: list[int] = [elections[0].term]
    runner = AsyncRunner()
    for i in (1, 2):

        async def stand(e: aio.Election = elections[i]) -> None:
            assert await e.campaign(timeout=30)
            order.append(str(e.value))
            terms.append(e.term)
            await e.resign()

        runner.start(stand)

        async def queued(n: int = i + 1) -> bool:
            return len(await elections[0].candidates()) == n

        await runner.wait_for(queued, 10)
    standbys = [h.value for h in (await elections[0].candidates())[1:]]
    assert sorted(standbys) == ["c1", "c2"]
    await elections[0].resign()
    await runner.join()
    assert sorted(order) == ["c1", "c2"]
    if backend.capabilities.fifo:
        assert order == ["c1", "c2"]
    assert terms == sorted(terms)
    assert len(set(terms)) == 3


async def test_proclaim_and_not_leader_errors(aclients: Clients) -> None:
    client = await aclients()
    election = client.election("proclaimed", value="v1")
    with pytest.raises(NotLeaderError):
        await election.resign()
    with pytest.raises(NotLeaderError):
        await election.proclaim("v2")
    with pytest.raises(NotLeaderError):
        _ = election.term
    async with election:
        await election.proclaim("v2")
        leader = await election.leader()
        assert leader is not None
        assert leader.value == "v2"
    assert not election.is_leader


async def test_elections_and_locks_do_not_share_names(aclients: Clients) -> None:
    client = await aclients()
    async with client.election("shared-name"):
        lock = client.lock("shared-name")
        assert await lock.acquire(blocking=False)
        await lock.release()


async def test_with_election_times_out(aclients: Clients) -> None:
    a, b = await aclients(), await aclients(timeout=0.2)
    async with a.election("busy"):
        with pytest.raises(AcquireTimeoutError):
            async with b.election("busy"):
                raise AssertionError("must not run")


async def test_observe_sees_every_leader_in_order(aclients: Clients) -> None:
    watcher, a, b = await aclients(), await aclients(), await aclients()
    seen: list[Holder] = []
    runner = AsyncRunner()

    async def observe() -> None:
        async for leader in watcher.election("observed").observe():
            seen.append(leader)
            if len(seen) == 3:
                return

    ea = a.election("observed", value="a")
    assert await ea.campaign()
    runner.start(observe)

    async def saw(n: int) -> bool:
        return len(seen) >= n

    await runner.wait_for(lambda: saw(1), 10)
    await ea.proclaim("a2")
    await runner.wait_for(lambda: saw(2), 10)
    await ea.resign()
    eb = b.election("observed", value="b")
    assert await eb.campaign()
    await runner.join()
    assert [h.value for h in seen] == ["a", "a2", "b"]
    assert seen[0].token < seen[2].token
    await eb.resign()


async def test_stolen_leadership_sets_lost(aclients: Clients, backend: Backend) -> None:
    client = await aclients(ttl=backend.ttl)
    election = client.election("deposed", value="x")
    called: list[object] = []
    election.on_lost(called.append)
    assert await election.campaign()
    backend.steal("deposed", kind="election")
    assert await election.lost.wait(10 * backend.ttl)
    # `lost` is set before the callbacks run (docs/semantics.md), maybe on another thread.
    for _ in range(1000):  # bounded: 10 s
        if called:
            break
        await _compat.sleep(0.01)
    assert called == [election]
    assert not election.is_leader
    with pytest.raises(NotLeaderError):
        await election.resign()
