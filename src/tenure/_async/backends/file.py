"""The embedded ``file://`` backend: cross-process locks among the processes of one machine.

Layout under ``<root>/<namespace>/<kind>/`` (``root`` from the URL path, default the user's state
dir)::

    <stem>.lock      the lock target, never renamed or deleted; held with an OFD write lock
    <stem>.json      holder record and fencing counter, replaced atomically (rename) by the holder
    <stem>.wait/     one file per waiting process, OFD-locked while it waits (for ``contenders``)

- **Exclusion** comes from open-file-description locks (``F_OFD_SETLK``): owned by one open file,
  not by the process, so two clients in one process exclude each other too, and the kernel frees
  them the moment a holder dies. A paused holder keeps its lock: this backend has no lease.
- **Tokens**: ``<stem>.json`` holds the last token; a new holder writes ``token + 1`` while holding
  the lock, so tokens strictly increase (they survive process crashes, not a lost file system).
- **Waiting** without polling: a waiter watches ``<stem>.lock`` with inotify. Every release closes
  the holder's file (also when the kernel closes it for a dead process), which wakes the waiting
  processes; each tries once more. Grants across processes are not FIFO (every waiting process
  wakes and one wins); inside one process the core's queue is FIFO. Where inotify is missing
  (not Linux) waiters re-check with a bounded back-off instead.
- Release closes our own file: it can never unlock another holder's.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import struct
import weakref
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from ..._names import OwnerInfo, new_owner_id
from ..._types import Capabilities, Holder, utcnow
from ..._url import ParsedURL
from ...errors import BackendError, ConfigurationError
from .. import _compat
from .base import EXCLUSIVE, KINDS, Grant, Lease, Mode

__all__ = ["FileDriver", "default_root"]

_OFD = hasattr(fcntl, "F_OFD_SETLK")
_SETLK = fcntl.F_OFD_SETLK if _OFD else fcntl.F_SETLK
_GETLK = fcntl.F_OFD_GETLK if _OFD else fcntl.F_GETLK
_FLOCK = "hhqqi4x"  # struct flock on 64-bit Linux: type, whence, start, len, pid
_MAX_STEM = 200

# Every lock file this process holds, so a forked child can close its copies (without unlocking:
# the lock belongs to the parent's open file, which the child shares).
_HELD_FDS: set[int] = set()


def _close_inherited() -> None:
    for fd in list(_HELD_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_inherited)


def default_root() -> Path:
    """``$XDG_STATE_HOME/tenure``, else ``~/.local/state/tenure``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "tenure"


def _stem(name: str) -> str:
    stem = quote(name, safe="")
    if len(stem) > _MAX_STEM:  # keep file names under NAME_MAX, still unique
        stem = stem[:120] + "~" + hashlib.sha256(name.encode()).hexdigest()
    return stem


def _try_lock(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, _SETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _unlock(fd: int) -> None:
    fcntl.fcntl(fd, _SETLK, struct.pack(_FLOCK, fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0))


def _is_locked(path: Path) -> bool:
    """Whether anyone holds ``path``'s lock, without taking it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        reply = fcntl.fcntl(fd, _GETLK, probe)
        return bool(struct.unpack(_FLOCK, reply)[0] != fcntl.F_UNLCK)
    finally:
        os.close(fd)


class _Watch:
    """An inotify watch on a few paths; ``wait`` returns when one of them is closed or replaced."""

    _libc: ClassVar[Any] = None
    _IN_CLOSE = 0x08 | 0x10  # IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
    _IN_MOVED_TO = 0x80

    def __init__(self, paths: Sequence[tuple[Path, int]]) -> None:
        self.fd = -1
        libc = self._load()
        if libc is None:
            return
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return
        self.fd = fd
        for path, mask in paths:
            if libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
                err = ctypes.get_errno()
                self.close()
                raise OSError(err, os.strerror(err), str(path))

    @classmethod
    def _load(cls) -> Any:
        if cls._libc is None:
            name = ctypes.util.find_library("c")
            try:
                libc = ctypes.CDLL(name, use_errno=True)
                libc.inotify_init1  # noqa: B018 - probe: missing outside Linux
            except (OSError, AttributeError):
                cls._libc = False
            else:
                cls._libc = libc
        return cls._libc or None

    async def wait(self, timeout: float | None) -> None:
        if self.fd < 0:  # no inotify: bounded back-off, the documented exception
            await _compat.sleep(0.02 if timeout is None else min(timeout, 0.02))
            return
        if await _compat.wait_readable(self.fd, timeout):
            with contextlib.suppress(BlockingIOError):
                while os.read(self.fd, 65536):
                    pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FileDriver:
    """Driver for ``file:///dir`` (see the module docstring)."""

    scheme: ClassVar[str] = "file"
    capabilities: ClassVar[Capabilities] = Capabilities(
        leases=False,
        fifo=False,
        min_ttl=0.0,
        expiry_slack=0.0,
        wakeup="inotify on the lock file",
    )
    options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, url: ParsedURL, *, namespace: str, options: dict[str, str]) -> None:
        if any(host not in ("", "localhost") or port is not None for host, port in url.hosts):
            raise ConfigurationError(
                "file:// URLs name a local directory and take no host: use file:///absolute/path"
            )
        if url.path and not url.path.startswith("/"):
            raise ConfigurationError(f"file:// URL path must be absolute, got {url.path!r}")
        self.root = Path(url.path) if url.path not in ("", "/") else default_root()
        if url.path == "/":
            raise ConfigurationError("file:/// names the root directory; give a directory path")
        self._dir = self.root / namespace
        self._grants: weakref.WeakSet[Grant] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"FileDriver({str(self._dir)!r})"

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        kind, _, name = key.partition("/")
        base = self._dir / kind
        stem = _stem(name)
        return base / f"{stem}.lock", base / f"{stem}.json", base / f"{stem}.wait"

    async def connect(self) -> None:
        for kind in KINDS:
            try:
                (self._dir / kind).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot use {self._dir} for file locks: {exc.strerror}"
                ) from exc
        if not os.access(self._dir, os.W_OK | os.X_OK):
            raise ConfigurationError(f"cannot use {self._dir} for file locks: not writable")

    async def close(self) -> None:
        return None

    # Leases: the kernel frees a dead process's locks, so a session needs no lease here.

    async def grant_lease(self, ttl: float) -> Lease:
        return Lease(id=new_owner_id(), ttl=ttl)

    async def renew_lease(
        self, lease: Lease, grants: Sequence[Grant], timeout: float
    ) -> Sequence[Grant]:
        return [grant for grant in grants if not self._still_ours(grant)]

    async def revoke_lease(self, lease: Lease) -> None:
        for grant in list(self._grants):
            if grant.lease is lease:
                await self.release(grant)

    # Contenders.

    async def acquire(
        self, lease: Lease, key: str, owner: OwnerInfo, deadline: float | None, mode: Mode
    ) -> Grant | None:
        if mode != EXCLUSIVE:  # not yet: [rwlock]/[semaphore] bring the shared modes here
            raise ConfigurationError(f"{self.scheme}: {mode.name} mode is not supported yet")
        lock_path, state_path, wait_dir = self._paths(key)
        fd = self._open(lock_path)
        granted = False
        try:
            if not _try_lock(fd):
                if deadline is not None and deadline <= _compat.monotonic():
                    return None
                if not await self._wait_for_lock(fd, lock_path, wait_dir, owner, deadline):
                    return None
            grant = self._grant(fd, key, state_path, owner, lease)
            granted = True
            return grant
        finally:
            if not granted:
                os.close(fd)

    async def _wait_for_lock(
        self, fd: int, lock_path: Path, wait_dir: Path, owner: OwnerInfo, deadline: float | None
    ) -> bool:
        # Watch first, then try again: a release between our try and the watch is not missed.
        watch = _Watch([(lock_path, _Watch._IN_CLOSE)])
        waiter_fd, waiter_path = self._register_waiter(wait_dir, owner)
        try:
            while not _try_lock(fd):
                remaining = None if deadline is None else deadline - _compat.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                await watch.wait(remaining)
            return True
        finally:
            watch.close()
            with contextlib.suppress(OSError):
                waiter_path.unlink()
            os.close(waiter_fd)

    def _open(self, path: Path) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BackendError(f"cannot open lock file {path}: {exc.strerror}") from exc

    def _register_waiter(self, wait_dir: Path, owner: OwnerInfo) -> tuple[int, Path]:
        wait_dir.mkdir(exist_ok=True)
        record = _record(owner, token=0, acquired_at=None)
        final = wait_dir / f"{_compat.monotonic_ns():020d}-{owner.owner}.json"
        tmp = final.with_suffix(".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        _try_lock(fd)  # lock before it becomes visible, so a listed waiter is always locked
        os.write(fd, json.dumps(record).encode())
        os.rename(tmp, final)
        return fd, final

    def _grant(self, fd: int, key: str, state_path: Path, owner: OwnerInfo, lease: Lease) -> Grant:
        previous = _read_json(state_path)
        token = int(previous.get("token", 0)) + 1 if previous else 1
        acquired_at = utcnow()
        record = _record(owner, token=token, acquired_at=acquired_at)
        record["name"] = key.partition("/")[2]
        _write_json(state_path, record)
        grant = Grant(key, owner, token, lease, acquired_at, data=fd)
        _HELD_FDS.add(fd)
        self._grants.add(grant)
        return grant

    async def release(self, grant: Grant) -> bool:
        fd = grant.data
        if fd is None:
            return False
        grant.data = None
        self._grants.discard(grant)
        _HELD_FDS.discard(fd)
        ours = self._still_ours_fd(fd, grant.key)
        try:
            _unlock(fd)
        finally:
            os.close(fd)  # the close is what wakes the waiters (inotify IN_CLOSE_WRITE)
        return ours

    async def check(self, grant: Grant) -> bool:
        return self._still_ours(grant)

    def _still_ours(self, grant: Grant) -> bool:
        fd = grant.data
        return fd is not None and self._still_ours_fd(fd, grant.key)

    def _still_ours_fd(self, fd: int, key: str) -> bool:
        # Ours while the path still names the file we locked (nobody deleted or replaced it).
        try:
            mine = os.fstat(fd)
            current = os.stat(self._paths(key)[0])
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino)

    async def set_value(self, grant: Grant, value: str) -> bool:
        if not self._still_ours(grant):
            return False
        state_path = self._paths(grant.key)[1]
        record = _read_json(state_path) or {}
        if record.get("owner") != grant.owner.owner:
            return False
        record["value"] = value
        _write_json(state_path, record)
        return True

    # Inspection.

    async def holder(self, key: str) -> Holder | None:
        lock_path, state_path, _ = self._paths(key)
        if not _is_locked(lock_path):
            return None
        record = _read_json(state_path)
        if not record:
            return None
        return _holder(key, record)

    async def contenders(self, key: str) -> list[Holder]:
        wait_dir = self._paths(key)[2]
        found: list[Holder] = []
        current = await self.holder(key)
        if current is not None:
            found.append(current)
        try:
            entries = sorted(wait_dir.glob("*.json"))
        except OSError:
            entries = []
        for entry in entries:
            if not _is_locked(entry):
                continue  # its process died or just stopped waiting
            record = _read_json(entry)
            if record and (current is None or record.get("owner") != current.owner):
                found.append(_holder(key, record))
        return found

    async def changes(self, key: str) -> AsyncIterator[None]:
        lock_path, state_path, _ = self._paths(key)
        os.close(self._open(lock_path))  # so the watch has a file to watch
        watch = _Watch([(lock_path, _Watch._IN_CLOSE), (state_path.parent, _Watch._IN_MOVED_TO)])
        try:
            while True:
                yield
                await watch.wait(None)
        finally:
            watch.close()

    def forget_after_fork(self) -> None:
        # The at-fork hook already closed the child's copies of our lock files.
        for grant in list(self._grants):
            grant.data = None
        self._grants = weakref.WeakSet()


def _record(owner: OwnerInfo, *, token: int, acquired_at: dt.datetime | None) -> dict[str, Any]:
    return {
        "owner": owner.owner,
        "host": owner.host,
        "pid": owner.pid,
        "token": token,
        "acquired_at": None if acquired_at is None else acquired_at.isoformat(),
        "value": owner.value,
    }


def _holder(key: str, record: dict[str, Any]) -> Holder:
    acquired = record.get("acquired_at")
    return Holder(
        name=key.partition("/")[2],
        owner=str(record.get("owner", "")),
        host=str(record.get("host", "")),
        pid=int(record.get("pid", 0)),
        token=int(record.get("token", 0)),
        acquired_at=None if acquired is None else dt.datetime.fromisoformat(acquired),
        expires_in=None,
        value=record.get("value"),
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read() or b"null")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BackendError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else None


def _write_json(path: Path, record: dict[str, Any]) -> None:
    # Only the lock holder writes, so one temp name per file is enough.
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(json.dumps(record).encode())
        os.replace(tmp, path)
    except OSError as exc:
        raise BackendError(f"cannot write {path}: {exc.strerror}") from exc
