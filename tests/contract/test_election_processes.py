"""Elections across processes: a killed leader is replaced, a paused one is fenced off."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest

import tenure

from . import workers
from .backends import Backend
from .runners import Runner

SPAWN = multiprocessing.get_context("spawn")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _start_leader(backend: Backend, tmp_path: Path, ttl: float) -> tuple[BaseProcess, Path, int]:
    state, fence = tmp_path / "state", tmp_path / "fence"
    proc = SPAWN.Process(
        target=workers.lead, args=(backend.url, "active", str(state), str(fence), ttl)
    )
    proc.start()
    Runner.wait_for(lambda: any(x.startswith("leader") for x in _lines(state)), 60)
    term = int(_lines(state)[0].split()[1])
    return proc, state, term


def test_killed_leader_is_replaced_by_the_standby(backend: Backend, tmp_path: Path) -> None:
    ttl = 2.0
    proc, _state, old_term = _start_leader(backend, tmp_path, ttl)
    try:
        with tenure.connect(backend.url, ttl=ttl) as client:
            standby = client.election("active", value="standby")
            assert not standby.campaign(timeout=0.1)
            current = client.election("active").leader()
            assert current is not None
            assert current.value == str(proc.pid)
            proc.kill()
            killed = time.monotonic()
            slack = backend.capabilities.expiry_slack
            assert standby.campaign(timeout=ttl + slack + 10)
            print(
                f"{backend.name}: standby took over {time.monotonic() - killed:.3f} s after SIGKILL"
            )
            assert standby.term > old_term
            standby.resign()
    finally:
        proc.kill()
        proc.join(10)


def _holds_flock(pid: int, path: Path) -> bool:
    inode = os.stat(path).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (blocked waiters carry "->")
        held = "->" not in fields and len(fields) >= 6 and fields[4] == str(pid)
        if held and int(fields[5].rsplit(":", 1)[1]) == inode:
            return True
    return False


def _stop_outside_the_fence(pid: int, fence: Path) -> None:
    """SIGSTOP the leader, but not inside the fence's own flock (a process stopped there would
    block every other writer of the fence: that would test the fence file, not the lock)."""
    for _ in range(200):  # bounded: the leader spends microseconds of each 20 ms in the flock
        os.kill(pid, signal.SIGSTOP)
        Runner.wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "T", 10)
        if not fence.exists() or not _holds_flock(pid, fence):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)  # let it leave the flock before stopping it again
    raise AssertionError("the leader was always inside the fence's flock")


def test_paused_leader_loses_and_is_fenced_off(backend: Backend, tmp_path: Path) -> None:
    if not backend.capabilities.leases:
        pytest.skip(f"{backend.name}: a paused holder keeps its lock by design (no lease)")
    ttl = 1.0
    proc, state, old_term = _start_leader(backend, tmp_path, ttl)
    fence = workers.Fence(str(tmp_path / "fence"))
    try:
        with tenure.connect(backend.url, ttl=ttl) as client:
            _stop_outside_the_fence(proc.pid, tmp_path / "fence")
            paused = time.monotonic()
            standby = client.election("active", value="standby")
            assert standby.campaign(timeout=ttl + backend.capabilities.expiry_slack + 10)
            print(f"{backend.name}: took over {time.monotonic() - paused:.3f} s after SIGSTOP")
            new_term = standby.term
            assert new_term > old_term
            assert fence.write(new_term, "standby")
            os.kill(proc.pid, signal.SIGCONT)
            Runner.wait_for(lambda: any(x.startswith("lost") for x in _lines(state)), 30)
            # Every write the old leader made after the new term was refused by the fence.
            accepted = [x for x in (tmp_path / "fence").read_text().splitlines() if x]
            after = accepted[[x.split()[1] for x in accepted].index("standby") :]
            assert all(x.split()[1] == "standby" for x in after), after
            standby.resign()
    finally:
        proc.kill()
        proc.join(10)
