"""The CI tier: each fault class, a few injections, four client processes, TTL 1 s.

The long tier (thousands of acquisitions per fault class) is ``python -m tests.faults``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.history import summarize
from tests.faults.nemesis import FAULTS, SERVER_FAULTS, RunConfig, RunResult, run
from tests.servers import ServerProcess, record_timing, start_etcd_cluster
from tests.servers.zookeeper import ZooKeeperEnsemble

pytestmark = pytest.mark.faults

TTL = 1.0
_SERVER = {"redlock": "redis"}  # the server a backend runs on
CASES = [
    pytest.param(
        (backend, fault),
        id=f"{backend}-{fault}",
        marks=[pytest.mark.server(_SERVER.get(backend, backend))] if backend != "file" else [],
    )
    for backend, faults in FAULTS.items()
    for fault in faults
]


def describe(result: RunResult) -> str:
    r = result.report
    lines = [
        f"{result.config.backend}/{result.config.fault}: {r.acquisitions} acquisitions, "
        f"{len(result.faults)} faults ({result.skipped} skipped) in {result.elapsed:.1f} s; "
        f"overlaps {r.overlaps} ({r.unexplained_overlaps} unexplained); "
        f"unfenced: stale {r.stale_unfenced}, lost updates {r.lost_updates_unfenced}; "
        f"fenced: stale {r.stale_fenced}, lost updates {r.lost_updates_fenced}, "
        f"refused {r.rejected_fenced}; expired-session grants {r.expired_session_grants}; "
        f"late losses {r.late_losses} ({r.unexplained_late_losses} unexplained)",
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
    request: pytest.FixtureRequest, backend_fault: tuple[str, str]
) -> Iterator[ServerProcess | ZooKeeperEnsemble | None]:
    backend, fault = backend_fault
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
def backend_fault(request: pytest.FixtureRequest) -> tuple[str, str]:
    backend, fault = request.param
    return backend, fault


def test_safety_under_fault(
    backend_fault: tuple[str, str],
    server: ServerProcess | ZooKeeperEnsemble | None,
    tmp_path: Path,
) -> None:
    backend, fault = backend_fault
    config = RunConfig(
        backend,
        fault,
        workers=4,
        ttl=TTL,
        duration=40.0,
        injections=2,
        settle=20,
        max_acquisitions=150 if fault == "none" else 100_000,
    )
    result = run(config, tmp_path / "run", server)
    report = result.report
    info = describe(result)
    print(info)
    for m in report.measures:
        if m.lost_after is not None:
            record_timing(f"{backend} {fault}: lost", m.lost_after)
        if m.takeover_after is not None:
            record_timing(f"{backend} {fault}: takeover", m.takeover_after)

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
    assert report.safe(), info

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
