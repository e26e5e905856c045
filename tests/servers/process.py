"""Common machinery: the ServerProcess class, the PID registry, free ports, polling.

Every process started here stays in the test runner's session and process group
(no ``start_new_session``), and is tracked in a module-level registry so that
:func:`kill_all_servers` (run by ``atexit`` and by the pytest plugin) can kill
leftovers by PID.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "ServerMissing",
    "ServerProcess",
    "ServerStartError",
    "free_port",
    "kill_all_servers",
    "live_server_pids",
    "make_temp_dir",
    "record_startup",
    "record_timing",
    "started_pids",
    "startup_times",
    "timings",
    "wait_until",
]

HOST = "127.0.0.1"

# ---------------------------------------------------------------------------
# errors


class ServerMissing(Exception):
    """A server binary is not installed; ``package`` names the Debian package to install."""

    def __init__(self, kind: str, what: str, package: str) -> None:
        self.kind = kind
        self.package = package
        super().__init__(
            f"{kind}: {what} not found; install the Debian package {package!r} "
            f"(or run scripts/install-servers.sh)"
        )


class ServerStartError(RuntimeError):
    """A server did not become ready in time, or exited while starting."""


# ---------------------------------------------------------------------------
# registry

_lock = threading.Lock()
_live: dict[int, ServerProcess] = {}
_started: list[int] = []
_startup: list[tuple[str, float]] = []
_timings: list[tuple[str, float]] = []
_temp_dirs: list[Path] = []


def live_server_pids() -> list[int]:
    """PIDs of server processes started here that are still running (not reaped)."""
    with _lock:
        procs = list(_live.values())
    return [p.pid for p in procs if p.alive]


def started_pids() -> list[int]:
    """Every PID this module ever started, in order."""
    with _lock:
        return list(_started)


def record_startup(label: str, seconds: float) -> None:
    """Record how long a server (or a cluster, as one label) took to become ready."""
    with _lock:
        _startup.append((label, seconds))


def startup_times() -> list[tuple[str, float]]:
    with _lock:
        return list(_startup)


def record_timing(label: str, seconds: float) -> None:
    """Record any other measured duration (e.g. a fail-over) for the terminal summary."""
    with _lock:
        _timings.append((label, seconds))


def timings() -> list[tuple[str, float]]:
    with _lock:
        return list(_timings)


def kill_all_servers() -> list[int]:
    """SIGKILL every registered server that is still alive; return the PIDs that were alive."""
    with _lock:
        procs = list(_live.values())
    killed = []
    for proc in procs:
        if proc.alive:
            killed.append(proc.pid)
        proc.kill()
    return killed


def _cleanup_temp_dirs() -> None:
    with _lock:
        dirs = list(_temp_dirs)
        _temp_dirs.clear()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _atexit() -> None:
    kill_all_servers()
    _cleanup_temp_dirs()


atexit.register(_atexit)


# ---------------------------------------------------------------------------
# temp dirs and ports


def _temp_base() -> str | None:
    """Prefer tmpfs (/dev/shm): fsync is free there, which makes etcd and ZooKeeper fast."""
    env = os.environ.get("TENURE_TEST_TMPDIR")
    if env:
        return env
    shm = "/dev/shm"
    try:
        if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
            st = os.statvfs(shm)
            if st.f_bavail * st.f_frsize > 1 << 30:
                return shm
    except OSError:
        pass
    return None  # tempfile's default


def make_temp_dir(prefix: str) -> Path:
    """A new private temp dir, removed by the owner's ``close()`` or at interpreter exit."""
    path = Path(tempfile.mkdtemp(prefix=f"tenure-{prefix}-", dir=_temp_base()))
    with _lock:
        _temp_dirs.append(path)
    return path


def remove_temp_dir(path: Path) -> None:
    with _lock:
        if path in _temp_dirs:
            _temp_dirs.remove(path)
    shutil.rmtree(path, ignore_errors=True)


_handed_out: set[int] = set()


def _port_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range, so outgoing connections never take them."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if low > 12000:
        return 10000, low - 1
    return 1024 * 40, 65000  # unusual kernel setting: use the top of the range


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and was not handed out before in this process."""
    lo, hi = _port_range()
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randint(lo, hi)
        with _lock:
            if port in _handed_out:
                continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        with _lock:
            _handed_out.add(port)
        return port
    raise RuntimeError("no free TCP port found on 127.0.0.1")


# ---------------------------------------------------------------------------
# polling


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str = "condition",
    *,
    first_interval: float = 0.005,
    max_interval: float = 0.1,
) -> object:
    """Poll ``predicate`` (exceptions count as "not yet") with a backoff until it returns
    something truthy, which is returned; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    interval = first_interval
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
        except Exception as exc:
            last_exc = exc
        else:
            if result:
                return result
        now = time.monotonic()
        if now >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc is not None else ""
            raise TimeoutError(f"{what} not reached within {timeout:.1f} s{extra}")
        time.sleep(min(interval, deadline - now))
        interval = min(interval * 2, max_interval)


def tcp_request(port: int, payload: bytes, timeout: float = 1.0, host: str = HOST) -> bytes:
    """Send ``payload``, half-close, and read until the server closes (for 4-letter words)
    or until something arrives and the socket goes quiet (for RESP)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(payload)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
            if payload.endswith(b"\r\n") and data.endswith(b"\r\n"):
                break  # a RESP reply: one line is enough for our probes
        return b"".join(chunks)


# ---------------------------------------------------------------------------
# processes


def _children(pid: int) -> list[int]:
    """Direct and indirect children of ``pid`` (from /proc), for servers that fork."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class ServerProcess:
    """One server process: spawn, readiness probe, stop/kill/pause/resume/restart by PID.

    ``probe`` is called (repeatedly, exceptions meaning "not yet") until it returns True.
    The process's stdout and stderr go to ``log_path`` (appended across restarts).
    """

    kind = "server"
    stop_signal = signal.SIGTERM
    stop_grace = 10.0
    start_timeout = 60.0

    def __init__(
        self,
        argv: Sequence[str],
        *,
        port: int,
        log_path: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        run_as: str | None = None,
        name: str | None = None,
        host: str = HOST,
    ) -> None:
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.log_path = log_path
        self.cwd = cwd
        self.env = env
        self.run_as = run_as  # OS user to run as (needs root), None: ourselves
        self.name = name or self.kind
        self.ready_seconds: float | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._spawned_at = 0.0
        self._paused = False
        self.owned_tmp: Path | None = None  # removed by close()

    # -- overridable ---------------------------------------------------------
    def probe(self) -> bool:
        """True once the server answers a real request."""
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------
    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen.pid

    @property
    def alive(self) -> bool:
        """True while the process exists (a paused process is alive)."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused and self.alive

    def spawn(self) -> None:
        """Start the process without waiting for readiness (see :meth:`wait_ready`)."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._spawned_at = time.monotonic()
            popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                user=self.run_as,
                close_fds=True,
            )
        self._popen = popen
        self._paused = False
        with _lock:
            _live[popen.pid] = self
            _started.append(popen.pid)

    def wait_ready(self, timeout: float | None = None) -> float:
        """Poll :meth:`probe` until it succeeds; return and record the seconds since spawn."""
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        interval = 0.005
        last_exc: BaseException | None = None
        while True:
            if not self.alive:
                raise ServerStartError(
                    f"{self.name} exited with code {self._exit_code()} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if self.probe():
                    break
            except Exception as exc:
                last_exc = exc
            now = time.monotonic()
            if now >= deadline:
                self.kill()
                raise ServerStartError(
                    f"{self.name} (pid {self.pid}, port {self.port}) not ready after "
                    f"{timeout:.1f} s (last probe error: {last_exc!r}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(min(interval, deadline - now))
            interval = min(interval * 1.5, 0.05)
        self.ready_seconds = time.monotonic() - self._spawned_at
        return self.ready_seconds

    def start(self, timeout: float | None = None) -> Self:
        self.spawn()
        self.wait_ready(timeout)
        return self

    def stop(self, grace: float | None = None) -> None:
        """Send the stop signal (SIGTERM unless the kind says otherwise), SIGKILL after
        ``grace`` seconds; reap the process."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(self.stop_signal)
                if self._paused:
                    popen.send_signal(signal.SIGCONT)
            try:
                popen.wait(self.stop_grace if grace is None else grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self._forget()

    def kill(self) -> None:
        """SIGKILL the process (and any children it forked) and reap it."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            children = _children(popen.pid)
            with contextlib.suppress(ProcessLookupError):
                popen.kill()
            for child in children:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child, signal.SIGKILL)
        popen.wait()
        self._forget()

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing."""
        if self._popen is None or not self.alive:
            raise RuntimeError(f"{self.name} is not running")
        self._popen.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._popen is not None and self.alive:
            self._popen.send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self, timeout: float | None = None) -> Self:
        """Stop (if running) and start again with the same arguments, port and data."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop the process and remove its temp dir if the harness created it."""
        self.stop()
        if self.owned_tmp is not None:
            remove_temp_dir(self.owned_tmp)
            self.owned_tmp = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _forget(self) -> None:
        self._paused = False
        if self._popen is not None:
            with _lock:
                _live.pop(self._popen.pid, None)

    def _exit_code(self) -> int | None:
        return None if self._popen is None else self._popen.returncode

    def log_tail(self, lines: int = 30, max_chars: int = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return "\n".join(text.splitlines()[-lines:])[-max_chars:]

    def __repr__(self) -> str:
        state = "alive" if self.alive else "stopped"
        pid = self._popen.pid if self._popen else None
        return f"<{type(self).__name__} {self.name} {self.host}:{self.port} pid={pid} {state}>"


class ServerGroup:
    """Base for objects owning several ServerProcess nodes and a temp dir (context manager)."""

    def __init__(self, nodes: Sequence[ServerProcess], tmp: Path, owns_tmp: bool) -> None:
        self._nodes = list(nodes)
        self.tmp = tmp
        self._owns_tmp = owns_tmp
        self.ready_seconds: float | None = None

    # Stop nodes concurrently? Not for etcd: its leader then waits seconds for a leadership
    # transfer that cannot happen.  ZooKeeper stops faster in parallel (no re-elections).
    parallel_stop = False

    def stop(self) -> None:
        """Stop every node (SIGTERM, SIGKILL after the grace)."""
        if not self.parallel_stop:
            for node in self._nodes:
                node.stop()
            return
        threads = [threading.Thread(target=n.stop) for n in self._nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def close(self) -> None:
        """Stop every node and remove the temp dir if this object created it."""
        self.stop()
        if self._owns_tmp:
            remove_temp_dir(self.tmp)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_all(nodes: Sequence[ServerProcess], timeout: float | None = None) -> float:
    """Spawn all nodes, then wait for each to be ready; return the wall time taken.

    If one fails to start, all are killed before the error propagates."""
    t0 = time.monotonic()
    try:
        for node in nodes:
            node.spawn()
        for node in nodes:
            node.wait_ready(timeout)
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    return time.monotonic() - t0
