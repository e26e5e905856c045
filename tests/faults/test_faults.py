"""The CI tier: each fault class, a few injections, four client processes, TTL 1 s.

Rows ``<backend>-<fault>`` are the lock's; ``rwlock-<backend>-<fault>`` (writers and readers) and
``semaphore-<backend>-<fault>`` (five clients, limit 2) cover the fault classes whose holder is
what changes (``PRIMITIVE_FAULTS``). The long tier (thousands of acquisitions per fault class) is
``python -m tests.faults``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.history import summarize
from tests.faults.nemesis import (
    FAULTS,
    PRIMITIVES,
    SERVER_FAULTS,
    RunConfig,
    RunResult,
    faults_of,
    run,
)
from tests.servers import ServerProcess, record_timing, start_etcd_cluster
from tests.servers.zookeeper import ZooKeeperEnsemble

pytestmark = pytest.mark.faults

TTL = 1.0
LIMIT = 2  # the semaphore's, with five clients
RWLOCK_PAUSE = ("rwlock", "pause-holder")
#: The server a backend runs on.
_SERVER = {"redlock": "redis", "redis-sentinel": "redis", "redis-cluster": "redis"}
#: Rows that start their own replicated set-up: one injection (a failover) each, in CI.
_ONE_FAILOVER = frozenset({"failover", "cluster-failover"})
CASES = [
    pytest.param(
        (backend, fault, primitive),
        id=f"{backend}-{fault}" if primitive == "lock" else f"{primitive}-{backend}-{fault}",
        marks=[pytest.mark.server(_SERVER.get(backend, backend))] if backend != "file" else [],
    )
    for primitive in PRIMITIVES
    for backend in FAULTS
    for fault in faults_of(backend, primitive)
]


def describe(result: RunResult) -> str:
    r = result.report
    lines = [
        f"{result.config.primitive} {result.config.backend}/{result.config.fault}: "
        f"{r.acquisitions} acquisitions, "
        f"{len(result.faults)} faults ({result.skipped} skipped) in {result.elapsed:.1f} s; "
        f"overlaps {r.overlaps} ({r.unexplained_overlaps} unexplained); "
        f"unfenced: stale {r.stale_unfenced}, lost updates {r.lost_updates_unfenced}; "
        f"fenced: stale {r.stale_fenced}, lost updates {r.lost_updates_fenced}, "
        f"refused {r.rejected_fenced}; expired-session grants {r.expired_session_grants}; "
        f"late losses {r.late_losses} ({r.unexplained_late_losses} unexplained); "
        f"stale reads: unfenced {r.stale_reads_unfenced}, fenced {r.stale_reads_fenced}; "
        f"readers at once {r.most_shared}; excess over {r.limit}: {r.excess} "
        f"({r.unexplained_excess} unexplained, most {r.most_concurrent}, pool {r.pool_excess}); "
        f"duplicate tokens {r.duplicate_tokens}",
        "lost after (ms, median / max): " + summarize([m.lost_after for m in r.measures]),
        "takeover after (ms, median / max): " + summarize([m.takeover_after for m in r.measures]),
        f"examples: {r.examples}",
        f"notes: {result.notes}",
        f"errors: {result.errors}",
        f"histories: {result.directory}",
    ]
    return "\n".join(lines)


#: backend -> (shared server fixture, fresh server fixture for faults that kill the server)
SERVER_FIXTURES = {
    "redis": ("redis_server", "fresh_redis"),
    "postgres": ("postgres_server", "fresh_postgres"),
    "zookeeper": ("zookeeper_server", "zookeeper_server"),  # no server faults in its row
}


@pytest.fixture
def server(
    request: pytest.FixtureRequest, backend_fault: tuple[str, str, str]
) -> Iterator[ServerProcess | ZooKeeperEnsemble | None]:
    backend, fault, _primitive = backend_fault
    if backend == "etcd":
        if fault not in SERVER_FAULTS:
            yield request.getfixturevalue("etcd_server").nodes[0]
            return
        single = start_etcd_cluster(1)  # killed and paused: not the shared one
        try:
            yield single.nodes[0]
        finally:
            single.close()
        return
    if backend not in SERVER_FIXTURES:
        yield None
        return
    shared, fresh = SERVER_FIXTURES[backend]
    server: ServerProcess | ZooKeeperEnsemble = request.getfixturevalue(
        fresh if fault in SERVER_FAULTS else shared
    )
    yield server


@pytest.fixture(params=CASES)
def backend_fault(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    backend, fault, primitive = request.param
    return backend, fault, primitive


def test_safety_under_fault(
    backend_fault: tuple[str, str, str],
    server: ServerProcess | ZooKeeperEnsemble | None,
    tmp_path: Path,
) -> None:
    backend, fault, primitive = backend_fault
    config = RunConfig(
        backend,
        fault,
        workers=5 if primitive == "semaphore" else 4,
        ttl=TTL,
        duration=40.0,
        # The new primitives' rows: one injection each (a reader first, see `victim_mode`), to
        # keep the tier within its budget; an rwlock's paused writer and reader both.
        injections=1
        if (primitive != "lock" and (primitive, fault) != RWLOCK_PAUSE) or fault in _ONE_FAILOVER
        else 2,
        settle=20,
        max_acquisitions=150 if fault == "none" else 100_000,
        primitive=primitive,
        limit=LIMIT,
    )
    result = run(config, tmp_path / "run", server)
    report = result.report
    info = describe(result)
    print(info)
    label = f"{backend} {fault}" if primitive == "lock" else f"{primitive} {backend} {fault}"
    for m in report.measures:
        if m.lost_after is not None:
            record_timing(f"{label}: lost", m.lost_after)
        if m.takeover_after is not None:
            record_timing(f"{label}: takeover", m.takeover_after)

    assert result.errors == [], info
    assert report.acquisitions >= (150 if fault == "none" else 20), info
    assert len(result.faults) == (0 if fault == "none" else config.injections), info
    # Safety, under every fault: with fencing nothing stale gets in and nothing is lost; no
    # overlap or late `lost` that a lock could have prevented; no grant in an expired session.
    assert report.stale_fenced == 0, info
    assert report.lost_updates_fenced == 0, info
    assert report.unexplained_overlaps == 0, info
    assert report.expired_session_grants == 0, info
    assert report.unexplained_late_losses == 0, info
    assert report.stale_reads_fenced == 0, info
    assert report.unexplained_excess == 0, info
    assert report.duplicate_tokens == 0, info
    assert report.safe(), info
    if primitive != "lock":
        _check_primitive(primitive, backend, fault, config, result)
        return

    measures = report.measures
    if fault in ("none", "kill-holder", "drop-acquire-reply", "drop-release-reply"):
        assert report.overlaps == 0, info
        assert report.stale_unfenced == report.lost_updates_unfenced == 0, info
    if fault not in {"none", "cut-off-waiter"}:
        assert all(m.takeover_after is not None for m in measures), info
    if fault in ("pause-server", "cut-off-holder"):
        # The holder was running: its `lost` must fire, and before anyone else is granted.
        assert all(m.lost_before_takeover is True for m in measures), info
    if fault == "cut-off-waiter":
        assert all(m.lost_after is not None for m in measures), info
    if fault == "kill-holder":
        bound = 1.0 if backend == "file" else TTL + 2.0
        assert all(m.takeover_after is not None and m.takeover_after < bound for m in measures)
    if fault == "pause-holder" and backend == "file":
        # No lease: the paused holder keeps the lock, nothing overlaps, nobody is refused.
        assert report.overlaps == 0, info
        assert report.stale_unfenced == report.rejected_fenced == 0, info
        assert all(m.takeover_after is not None and m.takeover_after >= TTL for m in measures)
    if fault == "pause-holder" and backend in ("redis", "postgres", "zookeeper"):
        # The negative control: past its TTL the paused holder's lease is gone, another client
        # holds the lock, and on resuming the ex-holder writes with its old token. The unfenced
        # twin accepts it (stale write, lost update); the fenced one refuses it.
        assert report.overlaps >= config.injections, info
        assert report.stale_unfenced >= config.injections, info
        assert report.lost_updates_unfenced >= 1, info
        assert report.rejected_fenced >= config.injections, info


def _check_primitive(
    primitive: str, backend: str, fault: str, config: RunConfig, result: RunResult
) -> None:
    """The rwlock and semaphore rows: the faults' expected effects, beside safety above."""
    report, info = result.report, describe(result)
    measures = report.measures
    assert all(m.takeover_after is not None for m in measures), info
    if primitive == "rwlock":
        assert report.most_shared >= 2, info  # readers did share
        stale_unfenced = report.stale_unfenced + report.stale_reads_unfenced
        if fault != "pause-holder" or backend == "file":
            # No holder acted past its lease (killed, or running on while cut off, or no
            # lease): nothing overlapped, nothing stale, and the fence refused nobody (readers
            # with different tokens do not refuse each other).
            assert report.overlaps == 0, info
            assert stale_unfenced == report.lost_updates_unfenced == 0, info
            assert report.rejected_fenced == 0, info
        if fault == "pause-holder" and backend != "file":
            # The negative control: the paused reader's second read and the paused writer's
            # write came after a newer writer's write: the unfenced twin took both (the write
            # overwrote the newer one's element), the fence refused both.
            assert report.overlaps >= config.injections, info
            assert report.stale_reads_unfenced >= 1, info
            assert report.stale_unfenced >= 1, info
            assert report.lost_updates_unfenced >= 1, info
            assert report.rejected_fenced >= config.injections, info
    else:
        assert report.limit == config.limit, info
        assert report.most_concurrent >= config.limit, info  # the permits were used
        if fault == "kill-holder" or (fault == "pause-holder" and backend == "file"):
            assert report.excess == report.pool_excess == 0, info
        if fault == "pause-holder" and backend != "file":
            # The paused holder's permit was given away: the pool counted limit + 1 occupants,
            # and the excess is explained by the pause (checked above).
            assert report.excess >= config.injections, info
            assert report.pool_excess >= config.injections, info
        if fault == "cut-off-holder":
            assert report.excess == report.pool_excess == 0, info
    if fault == "cut-off-holder":
        # The holder was running: its `lost` must fire before a conflicting grant.
        assert all(m.lost_before_takeover is True for m in measures), info
    if fault == "kill-holder":
        bound = 1.0 if backend == "file" else TTL + 2.0
        assert all(m.takeover_after is not None and m.takeover_after < bound for m in measures)
