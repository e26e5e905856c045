"""The measuring environment: idle-priority spinners, child processes, machine facts.

BENCHMARKING.md: keep every vCPU busy with a SCHED_IDLE spinner (an idle vCPU's wake-up costs
~300 µs per round trip), and keep workers, servers and spinners in one session and process group
(autogroup scheduling otherwise separates them). Every process here is forked from the runner,
so all share its process group; the spinners stop by themselves at a deadline or when the runner
is gone, and the runner terminates them by PID.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import multiprocessing
import multiprocessing.connection
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "CTX",
    "ChildFailed",
    "Spinners",
    "busy_fraction",
    "call_in_child",
    "filesystem_of",
    "machine_info",
    "stop_process",
]

CTX = multiprocessing.get_context("fork")
_SPIN_CHUNK = 200_000


class ChildFailed(RuntimeError):
    """A measurement in a child process raised, or did not finish in time."""


def _spin(deadline: float, parent: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while time.monotonic() < deadline and os.getppid() == parent:
        for _ in range(_SPIN_CHUNK):
            pass


def stop_process(proc: multiprocessing.process.BaseProcess, grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after ``grace``: only this process, by its PID."""
    if proc.is_alive():
        proc.terminate()
        proc.join(grace)
    if proc.is_alive():
        proc.kill()
        proc.join(grace)


class Spinners:
    """One SCHED_IDLE busy loop per CPU for the whole run (bounded by ``max_seconds``)."""

    def __init__(self, count: int | None = None, max_seconds: float = 3600.0) -> None:
        self.count = count or len(os.sched_getaffinity(0))
        self.max_seconds = max_seconds
        self.procs: list[multiprocessing.process.BaseProcess] = []

    def __enter__(self) -> Spinners:
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.count):
            proc = CTX.Process(target=_spin, args=(deadline, os.getpid()), daemon=True)
            proc.start()
            self.procs.append(proc)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            stop_process(proc)

    def describe(self) -> dict[str, Any]:
        policies = []
        for proc in self.procs:
            try:
                policies.append(os.sched_getscheduler(proc.pid or 0) == os.SCHED_IDLE)
            except OSError:
                policies.append(False)
        return {
            "count": self.count,
            "sched_idle": all(policies) and bool(policies),
            "pids": [p.pid for p in self.procs],
        }


def _child_entry(
    send: multiprocessing.connection.Connection, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    try:
        result = fn(*args)
    except BaseException as exc:
        send.send((False, f"{type(exc).__name__}: {exc}"))
    else:
        send.send((True, result))
    finally:
        send.close()


def call_in_child(fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
    """Run ``fn(*args)`` in a forked child and return its (picklable) result within ``timeout``."""
    recv, send = CTX.Pipe(duplex=False)
    proc = CTX.Process(target=_child_entry, args=(send, fn, args), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout):
            raise ChildFailed(f"{getattr(fn, '__name__', fn)} did not finish in {timeout:.0f} s")
        try:
            ok, value = recv.recv()
        except EOFError:
            raise ChildFailed(
                f"{getattr(fn, '__name__', fn)} died (exit {proc.exitcode})"
            ) from None
        if not ok:
            raise ChildFailed(str(value))
        return value
    finally:
        recv.close()
        proc.join(5)
        stop_process(proc)


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPUs' time that was not idle over ``seconds`` (from /proc/stat).

    Taken before the spinners start: anything well above zero is someone else's load (another
    test run on the machine), which makes the run's figures unreliable.
    """

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return float("nan")
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else float("nan")


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _versions(dists: Iterable[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in dists:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def filesystem_of(path: str) -> str:
    """The mount point and file-system type holding ``path`` (from /proc/mounts)."""
    best, kind = "", "unknown"
    real = os.path.realpath(path)
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1]
            inside = real == mount or real.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, parts[2]
    return f"{kind} ({best})" if best else kind


def _git_commit(root: Path) -> str:
    commit = _first_line(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    # The results of an earlier run are not changes to what is measured.
    status = ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"]
    dirty = _first_line([*status, "--", ".", ":!benchmarks/results"])
    return commit + (" (+ uncommitted changes)" if dirty else "")


def machine_info(root: Path, dists: Iterable[str]) -> dict[str, Any]:
    redis_version = _first_line(["redis-server", "--version"])
    return {
        "date": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "redis_server": redis_version.split(" v=")[1].split()[0]
        if " v=" in redis_version
        else (redis_version or "not installed"),
        "git": _git_commit(root),
        "packages": _versions(dists),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]
        if Path("/proc/loadavg").exists()
        else [],
    }
