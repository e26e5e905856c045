"""The embedded ``file://`` backend: cross-process locks among the processes of one machine.

Layout under ``<root>/<namespace>/<kind>/`` (``root`` from the URL path, default the user's state
dir)::

    <stem>.lock                  the key's queue file: sequence counter, semaphore limit, the
                                 fast path's fields and the fast holder's slot (below)
    <stem>.hold0, <stem>.hold1   the fast holder's liveness: a write lock on one of them
    <stem>.tail                  the last entry made: its sequence number and name
    <stem>.queue/<seq>-<m>-<id>  one entry per contender (holder or waiter), in arrival order;
                                 m is x (exclusive), s (shared) or p (permit); its content is
                                 the grant time (20 digits, zeros while waiting) and a JSON
                                 record {"host", "pid", "value"} (blanks may follow it);
                                 one its owner left is marked (``_LEFT_BIT``) and kept, locked,
                                 in place for that client's next entry
    <stem>.queue/.spare-<hex>    an older version's kept entry (swept once its process died)

- **The queue file's short lock.** Every contender takes a short open-file-description lock
  (``F_OFD_SETLKW``) on the first byte of ``<stem>.lock`` to join the queue. One that finds it
  taken announces itself (a shared lock on the second byte) while it waits, and a client that
  just left a fast grant of the key and finds it free while someone is announced lets them go
  first: the kernel wakes a blocked waiter without handing it the lock, so a process releasing
  and acquiring in a loop would otherwise overtake it again and again.
- **The fast grant.** If nobody holds or waits, the contender is granted at once without an
  entry: it write-locks the generation's hold file (generations alternate between the two, so
  the previous holder's close is never taken for this one's) and writes its token, grant time,
  mode and record in the queue file's slot, checksummed, in one write. The queue file also
  keeps the sequence number at which the queue was last seen empty: while no entry was created
  since, the directory need not be listed. Its release closes the hold file.
- **Entries.** Otherwise the contender bumps the sequence counter in place and creates its entry
  (``O_EXCL``) with an OFD write lock held for the entry's whole life. OFD locks belong to one
  open file, not to a process, so two clients in one process are two contenders, and the
  kernel frees them the moment a process dies: an entry without its lock is dead, and any
  contender behind it unlinks it. A paused process keeps its entries: this backend has no
  leases (and one paused inside the queue file's few-microsecond lock holds up that key's new
  contenders until it resumes).
- **Grants** follow ``base.grantable`` over the fast holder (always the oldest) and the live
  entries in sequence order (FIFO). The fencing token is the sequence number, as etcd's create
  revision or ZooKeeper's zxid: grants happen in sequence order, so each token exceeds every
  one granted before it, and the counter survives crashes. A used key whose queue file was
  deleted by hand continues from the clock in µs (a fast grant leaves no entry to count from).
- **Waiting** without polling or herd: a waiter watches (inotify ``IN_CLOSE_WRITE``, which the
  kernel also sends when a dead process's files are closed) only the entry it depends on: an
  exclusive waiter its nearest live predecessor, a reader the nearest live exclusive entry
  before it, the first permit waiter the ``limit`` holders, a later permit waiter its
  predecessor, which writes its grant time when granted (``IN_MODIFY``) so the next one moves
  up. So a release wakes the contenders that can now be granted, and only them. Only its
  owner opens an entry for writing, so an ``IN_CLOSE_WRITE`` on it means the owner is gone: the
  waiter unlinks it at once, because the kernel drops a dead process's lock only just *after*
  sending that event, and a waiter looking in between would otherwise see a live entry and
  wait for an event that never comes (its other watchers wake when it is deleted). For the
  same reason a waiter whose watch stays quiet looks again after 50 ms, then after twice as
  long each time, up to every 2 s: a waiter that set its watch between the event and the
  unlock (on a loaded machine that gap can last milliseconds) saw the entry locked and gets no
  event for the unlock. A release still wakes its waiter through the watch. A waiter's watch
  is one-shot (``IN_ONESHOT``): the kernel removes it with its first event, so a woken waiter
  has no watch to remove (one that must wait on sets a new one). Inotify instances are kept
  and reused (closing one that had watches waits for an RCU grace period, milliseconds); one
  is handed back with nothing queued in it. Without inotify (not Linux, or out of instances
  or watches) waiters re-check with a bounded back-off instead.
- **min_hold.** A release before ``min_hold`` is over leaves a *kept* entry in its place: an
  unlocked file ``<seq>-<m>-<id>.kept-<until>-<boot>`` (the same sequence number, so the same
  place in the queue), with the holder's grant time and record, written aside and renamed in
  under the queue file's lock (which also makes the next contender list the queue). It is live
  while the machine's monotonic clock (shared by its processes; ``<boot>`` tells a reboot) is
  before ``until``; contenders it blocks wake at that time (a timer, not a poll) and unlink it.
- **No listing on the common path.** An exclusive contender that joins behind a live entry
  reads which one from ``<stem>.tail`` (written by every joiner under the queue file's lock,
  with its sequence number: one that wrote none, a fast grant or another version, makes the
  numbers differ and the contender lists the directory instead) and waits for it alone. Woken
  by its leaving, it goes without listing if that entry was exclusive and had been granted
  (its grant time, read through a descriptor opened on it while waiting, which still reads
  after it was marked left or renamed away) and no kept entry was put in since (the queue
  file's "last seen empty" field, which ``_keep`` zeroes, is as it was when we joined): nobody
  before a granted exclusive entry is live, and only a kept entry can join ahead of us.
  Anything else (a reader or permit, a predecessor that timed out or died waiting) lists the
  queue, as before.
- **Release** marks our own entry left where it is (the owner's execute bit, ``fchmod``: watchers
  wake on ``IN_ATTRIB``, which no grant-time write sends; everyone else counts a marked entry as
  gone, and nobody but its owner removes it while it is locked). It becomes our next entry but one:
  renamed to its new place under the queue file's lock, the mark taken off (two alternate, so the
  one left last keeps its grant time for the waiter behind it). So a contended grant changes the
  directory once (the rejoin's rename), not twice; a rename costs a few µs, a new file an inode:
  hundreds of µs on a busy ext4. Beyond two kept entries it unlinks the entry (while still locked)
  and closes it. Either way it can never remove another contender's. A fast holder closes its hold
  file; the waiter watching it (``IN_CLOSE_WRITE``) blanks the slot, so a holder that somehow still
  runs finds itself lost. Deleting an entry, a hold file or the queue file by hand makes its holders
  lost.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import datetime as dt
import errno
import fcntl
import hashlib
import json
import math
import os
import stat
import struct
import threading
import time
import weakref
import zlib
from bisect import bisect_left
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from ..._names import OwnerInfo, current_pid, new_owner_id
from ..._types import Capabilities, Holder
from ..._url import ParsedURL
from ...errors import BackendError, ConfigurationError
from .. import _compat
from .base import KINDS, Grant, Lease, Mode, grantable, hold_left, limit_mismatch, refreshes

__all__ = ["FileDriver", "default_root", "network_filesystem"]

_OFD = hasattr(fcntl, "F_OFD_SETLK")
_SETLK = fcntl.F_OFD_SETLK if _OFD else fcntl.F_SETLK
_SETLKW = fcntl.F_OFD_SETLKW if _OFD else fcntl.F_SETLKW
_GETLK = fcntl.F_OFD_GETLK if _OFD else fcntl.F_GETLK
_FLOCK = "hhqqi4x"  # struct flock on 64-bit Linux: type, whence, start, len, pid
_WRLCK = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
# The queue file's short lock is on its first byte. A contender that finds it taken announces
# itself with a shared lock on the second byte while it waits, and one that gets the first byte
# while someone is announced lets them go first: the kernel wakes a blocked waiter but does not
# hand it the lock, so a process releasing and acquiring again in a loop would otherwise take
# it back, again and again, before the waiter has even run.
_QLOCK = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
_QUNLCK = struct.pack(_FLOCK, fcntl.F_UNLCK, os.SEEK_SET, 0, 1, 0)
_WANT = struct.pack(_FLOCK, fcntl.F_RDLCK, os.SEEK_SET, 1, 1, 0)
_WANTED = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 1, 1, 0)  # waits for the announced
_WANT_UNLCK = struct.pack(_FLOCK, fcntl.F_UNLCK, os.SEEK_SET, 1, 1, 0)
_HEADER = struct.Struct("<QQ")  # <stem>.lock: last sequence number, semaphore limit (0: none)
# Then the fast path's fields: the sequence number at which the queue directory was last known
# to hold no live entry, and the generation of the last fast grant (its hold file: generation % 2).
_FAST = struct.Struct("<QQ")
_SLOT = struct.Struct("<QQ4sII")  # the fast holder: token, grant time (ns), mode, blob size, crc
_SLOT_AT = _HEADER.size + _FAST.size
_READ_AHEAD = 512  # read of a queue file: its header, slot and a typical record at once
_TOKEN = struct.Struct("<Q")  # the slot's first field
_GEN_TOKEN = struct.Struct("<QQ")  # the last fast generation and the slot's token, adjacent
# The second byte of the slot's mode: "r" once its holder released (written before it closes its
# hold file: see ``_Fast.leave``). Outside the checksum.
_RELEASED_AT = _SLOT_AT + 17
_WAITING = b"0" * 20  # an entry's grant time until it is granted
_MODE_CHARS = {"exclusive": "x", "shared": "s", "permit": "p"}
_MODE_NAMES = {v: k for k, v in _MODE_CHARS.items()}
_MAX_STEM = 200
_OPEN_QUEUES = 64  # queue files kept open per driver (the most recently opened keys)

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE, _IN_DELETE = 0x02, 0x04, 0x08, 0x200
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_MOVE_SELF = 0x40, 0x80, 0x800
_IN_IGNORED, _IN_ONESHOT = 0x8000, 0x80000000
# An entry's owner left (marked it, ``_LEFT_BIT``), renamed it away, or died.
_LEFT = _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVE_SELF
# The mark of an entry its owner left in place (kept, locked, for its next entry): the user's
# execute bit, which an entry (created 0o644, less the umask) never has otherwise.
_LEFT_BIT = stat.S_IXUSR
_SPARE = ".spare-"  # an older version's kept entry (hidden: listings skip dot names)
_SPARES = 2  # kept per key and process
# A waiter whose watch stays quiet looks again after this long, doubling up to the second
# figure (seconds): see ``FileDriver.acquire``.
_SECOND_LOOK = (0.05, 2.0)
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (of the name)
_TAIL = struct.Struct("<Q96s")  # <stem>.tail: the last entry's sequence number and name

# Files this process holds open (entries, queue files, inotify instances): a forked child closes
# its copies (without unlocking: an OFD lock belongs to the open file, which the child shares).
_INHERITED: set[int] = set()
_IDLE_INOTIFY: list[int] = []


def _close_inherited() -> None:
    for fd in list(_INHERITED):
        with contextlib.suppress(OSError):
            os.close(fd)
    _INHERITED.clear()
    _IDLE_INOTIFY.clear()


os.register_at_fork(after_in_child=_close_inherited)


#: File-system types whose locks or inotify events are not those of the local kernel.
_NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "afs", "9p",
               "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs")  # fmt: skip


def network_filesystem(path: str, mounts: str | None = None) -> str | None:
    """The type of the network file system holding ``path`` (from ``/proc/self/mounts``, or
    ``mounts``), or None if it is local or cannot be told."""
    if mounts is None:
        try:
            with open("/proc/self/mounts") as f:
                mounts = f.read()
        except OSError:
            return None
    real = os.path.realpath(path)
    best, kind = "", ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")  # the kernel escapes spaces
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind if kind in _NETWORK_FS else None


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


def _locked(fd: int) -> bool:
    """Whether anyone holds a write lock on ``fd``'s file, without taking it."""
    return bool(struct.unpack(_FLOCK, fcntl.fcntl(fd, _GETLK, _WRLCK))[0] != fcntl.F_UNLCK)


def _marked_left(fd: int) -> bool:
    """Whether an entry is marked left in place by its owner (``_LEFT_BIT``)."""
    return bool(os.fstat(fd).st_mode & _LEFT_BIT)


def _alive(fd: int) -> bool:
    """Whether an entry is in the queue: locked (its owner lives) and not marked left."""
    return _locked(fd) and not _marked_left(fd)


def _path_locked(path: str) -> bool | None:
    """Whether anyone holds a write lock on the file ``path``; None if there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return _locked(fd)
    finally:
        os.close(fd)


def _lock_queue(fd: int, polite: bool = False) -> None:
    """Take a queue file's short lock; ``polite`` (we just left a fast grant of this key, and
    may take the next one at once): after any contender already waiting for it. Only then:
    waiting for every announced contender is unfair in turn when many queue (a crowd keeps
    announcing), and only the fast path lets one process overtake again and again."""
    try:
        fcntl.fcntl(fd, _SETLK, _QLOCK)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
    else:
        if not polite:
            return
        if struct.unpack(_FLOCK, fcntl.fcntl(fd, _GETLK, _WANTED))[0] == fcntl.F_UNLCK:
            return  # nobody waits for it
        fcntl.fcntl(fd, _SETLK, _QUNLCK)
        fcntl.fcntl(fd, _SETLKW, _WANTED)  # until those waiting have had their turn
        fcntl.fcntl(fd, _SETLK, _WANT_UNLCK)
    fcntl.fcntl(fd, _SETLKW, _WANT)
    try:
        fcntl.fcntl(fd, _SETLKW, _QLOCK)
    finally:
        fcntl.fcntl(fd, _SETLK, _WANT_UNLCK)


class _Queue:
    """One key's queue file (kept open) and entries directory."""

    __slots__ = (
        "dir",
        "fd",
        "hold_paths",
        "holds",
        "ino",
        "left_fast",
        "lock_path",
        "mutex",
        "pid",
        "reused",
        "spares",
        "tail_fd",
    )

    def __init__(self, lock_path: str, dir: str) -> None:
        self.lock_path, self.dir, self.pid, self.fd = lock_path, dir, current_pid(), -1
        self.holds: tuple[int, ...] = ()
        # Released entries kept, still locked, marked left in place (``_Entry.leave``).
        # Creating a file costs an inode (hundreds of µs on ext4 under load), renaming one a
        # few µs, marking one less (and no directory change).
        self.spares: list[tuple[int, str, int, int]] = []  # (fd, path, permission bits, size)
        self.left_fast = False  # our last grant of this key was fast, and we released it
        # The OFD lock excludes other open files, not other threads sharing this one.
        self.mutex = threading.Lock()
        self.fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        _INHERITED.add(self.fd)
        self.ino = os.fstat(self.fd).st_ino
        stem = lock_path.removesuffix(".lock")
        self.hold_paths = (stem + ".hold0", stem + ".hold1")
        self.tail_fd = os.open(stem + ".tail", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        _INHERITED.add(self.tail_fd)
        # Hold files already there: the key was used before (its queue file may be a new one).
        self.reused = os.path.exists(self.hold_paths[0])
        # Read-only, to test the fast holder's lock: only a fast holder opens them for writing.
        self.reopen_holds()
        _sweep_spares(dir)  # of processes that died since this key was last swept

    def replaced(self) -> bool:
        """Whether ``lock_path`` no longer names our file (deleted by hand)."""
        try:
            return os.stat(self.lock_path).st_ino != self.ino
        except FileNotFoundError:
            return True

    def __del__(self) -> None:
        # Closed once no cache, entry or caller uses it any more; in a forked child the fork
        # hook closed it already (and the number may be reused).
        if self.pid != current_pid():
            return
        self.drop_spares()
        for fd in (self.fd, self.tail_fd, *self.holds):
            if fd in _INHERITED:
                _INHERITED.discard(fd)
                os.close(fd)

    def drop_spares(self) -> None:
        """Delete our kept entries (while still locked, so nobody sees one unlocked)."""
        while self.spares:
            fd, path, _, _ = self.spares.pop()
            if fd in _INHERITED:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                _INHERITED.discard(fd)
                os.close(fd)

    def reopen_holds(self) -> None:
        old, self.holds = self.holds, ()
        for fd in old:
            _INHERITED.discard(fd)
            os.close(fd)
        self.holds = tuple(
            os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            for path in self.hold_paths
        )
        _INHERITED.update(self.holds)

    def fast_holder(self, data: bytes = b"") -> tuple[int, int, str, str] | None:
        """The live fast holder: (generation, token, entry-style name, hold file), or None
        (also for one that released but has not closed its hold file yet). ``data``: the
        queue file's start, if just read."""
        gen, slot = _read_slot(self.fd, data)
        if slot is None or slot[4] or not _locked(self.holds[gen % 2]):
            return None
        token, _, mode, blob, _ = slot
        owner = blob.partition(b"\n")[0].decode()
        return gen, token, f"{token:020d}-{mode}-{owner}", self.hold_paths[gen % 2]


def _read_slot(fd: int, data: bytes = b"") -> tuple[int, tuple[int, int, str, bytes, bool] | None]:
    """A queue file's last fast generation and its slot: (token, grant time, mode char, blob,
    released), None if there was none or it was buried (its holder found dead). A slot being
    rewritten (``set_value``) fails its checksum: read it again. ``data``: the file's start,
    if just read (``_READ_AHEAD`` bytes)."""
    size = _READ_AHEAD  # header, slot and a typical record (a longer one: read again, whole)
    for _ in range(100):
        read, data = data or os.pread(fd, size, 0), b""  # (read again, if we go round)
        if len(read) < _SLOT_AT + _SLOT.size:
            return 0, None
        gen = _FAST.unpack_from(read, _HEADER.size)[1]
        token, granted, mode, length, crc = _SLOT.unpack_from(read, _SLOT_AT)
        if not gen or not token:
            return gen, None
        blob = read[_SLOT_AT + _SLOT.size : _SLOT_AT + _SLOT.size + length]
        if len(blob) < length:
            size = _SLOT_AT + _SLOT.size + length
        elif _slot_crc(token, granted, mode[:1], blob) == crc:
            return gen, (token, granted, mode[:1].decode(), blob, mode[1:2] == b"r")
    return 0, None  # never settled: a writer keeps rewriting it (cannot happen)


class _Entry:
    """Our own entry: its file (OFD write-locked while it lives) and place in the queue."""

    __slots__ = (
        "ahead",
        "checked",
        "fd",
        "kept_until",
        "listing",
        "mode",
        "name",
        "partial",
        "path",
        "perm",
        "pred",
        "pred_gone",
        "queue",
        "seq",
        "size",
    )

    def __init__(self, queue: _Queue, seq: int, mode: Mode, owner: str) -> None:
        self.queue, self.seq, self.mode = queue, seq, mode
        self.ahead: tuple[int, str] | None = None  # the fast holder we wait for: gen, hold file
        self.kept_until: int | None = None  # the end (monotonic ns) of a kept entry we wait for
        self.listing: list[str] | None = None  # the queue as listed when we joined it
        self.partial = False  # ``listing`` is only our predecessor (the tail when we joined)
        self.checked = 0  # the queue file's "last seen empty" field when we joined
        # The exclusive entry we wait for, opened: (fd, path). Its content still reads after
        # it left (renamed away), so we can tell whether it was granted (``_predecessor_done``).
        self.pred: tuple[int, str] | None = None
        self.pred_gone = False  # its watch saw it renamed away (it left: no look needed)
        self.name = f"{seq:020d}-{_MODE_CHARS[mode.name]}-{owner}"
        self.path = os.path.join(queue.dir, self.name)
        self.fd = -1
        self.perm = 0o644  # its file's permission bits (without ``_LEFT_BIT``)
        self.size = 0  # its file's size (the longest content it was given)

    def ours(self) -> bool:
        """Still in place: not unlinked, and its queue file not replaced."""
        return self.fd >= 0 and os.fstat(self.fd).st_nlink > 0 and not self.queue.replaced()

    def drop_pred(self) -> None:
        self.pred_gone = False
        if self.pred is not None:
            fd, self.pred = self.pred[0], None
            _INHERITED.discard(fd)
            os.close(fd)

    def leave(self) -> None:
        """Leave the queue: mark our entry left where it is (``_LEFT_BIT``: ``IN_ATTRIB`` wakes
        whoever watches it; nobody counts it any more), still locked, to become our next entry
        but one (renamed then: no directory change now); or, with spares enough, unlink it while
        still locked (so nobody sees it unlocked but present), then close, which frees the lock
        and wakes its watchers (``IN_CLOSE_WRITE``)."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        queue = self.queue
        kept = False
        if len(queue.spares) < _SPARES and queue.pid == current_pid():
            with contextlib.suppress(OSError):
                os.fchmod(fd, self.perm | _LEFT_BIT)
                kept = True
        if kept:
            queue.spares.append((fd, self.path, self.perm, self.size))
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        _INHERITED.discard(fd)
        os.close(fd)


class _Fast:
    """Our fast grant: taken when the queue was empty, without an entry. The holder's record is
    the slot in the queue file, its liveness a write lock on the generation's hold file, which
    only a fast holder opens for writing: its ``IN_CLOSE_WRITE`` means this holder left or died.
    Two hold files alternate so that the close of the previous holder's file can never be taken
    for this one's."""

    __slots__ = ("blob", "fd", "gen", "granted", "mode", "posted", "queue", "seq")

    def __init__(self, queue: _Queue, seq: int, gen: int, mode: Mode, blob: bytes) -> None:
        self.queue, self.seq, self.gen, self.mode, self.blob = queue, seq, gen, mode, blob
        self.granted = time.time_ns()
        self.fd = -1
        self.posted = False  # our slot is written in the queue file

    @property
    def path(self) -> str:
        return self.queue.hold_paths[self.gen % 2]

    def slot(self, blob: bytes) -> bytes:
        mode = _MODE_CHARS[self.mode.name].encode()
        crc = _slot_crc(self.seq, self.granted, mode, blob)
        return _SLOT.pack(self.seq, self.granted, mode, len(blob), crc) + blob

    def ours(self) -> bool:
        """Still ours: the hold file in place, the queue file not replaced, the slot not buried
        by a waiter that saw our hold file closed (``FileDriver._bury``)."""
        if self.fd < 0 or os.fstat(self.fd).st_nlink == 0 or self.queue.replaced():
            return False
        head = os.pread(self.queue.fd, 16, _HEADER.size + 8)  # the generation, our token
        return len(head) == 16 and _GEN_TOKEN.unpack(head) == (self.gen, self.seq)

    def leave(self) -> None:
        """Release: mark our slot released, then close the hold file, which drops its lock
        (after the kernel has sent the ``IN_CLOSE_WRITE`` that wakes the next contender, if one
        waits). The mark first: a waiter that sets its watch between that event and the unlock
        sees the file still locked, and must see the mark instead of waiting for an event that
        has passed. (The slot is ours: a newer fast grant needs our hold file unlocked.)"""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            if self.posted and self.queue.pid == current_pid():
                with contextlib.suppress(OSError):
                    os.pwrite(self.queue.fd, b"r", _RELEASED_AT)
                self.queue.left_fast = True
            _INHERITED.discard(fd)
            os.close(fd)


def _slot_crc(token: int, granted: int, mode: bytes, blob: bytes) -> int:
    return zlib.crc32(mode + blob, (token ^ granted ^ (granted >> 32)) & 0xFFFFFFFF)


class _Watch:
    """An inotify watch on a few paths, on an instance borrowed from the process's idle ones.

    ``oneshot`` (a waiter's watch): each target's watch ends with its first event (the kernel
    removes it, ``IN_ONESHOT``), and the watch counts as ``gone``, so a waiter that must go on
    waiting sets a new one; a watch that fired needs no removal when the waiter is done."""

    _libc: ClassVar[Any] = None
    #: How many times a wait ended because a watched file changed (tests count wake-ups).
    wakeups: ClassVar[int] = 0

    def __init__(self, targets: Sequence[tuple[str, int]], oneshot: bool = False) -> None:
        self.targets = tuple(targets)
        self.wds: dict[int, str] = {}  # watch descriptor -> path (those still set)
        self.closed: list[str] = []  # targets whose writer closed them (IN_CLOSE_WRITE)
        self.moved: list[str] = []  # targets renamed away (IN_MOVE_SELF)
        self.gone = False  # a target vanished, or its one-shot watch fired: look again
        self.oneshot = oneshot
        try:
            self.fd = _IDLE_INOTIFY.pop()
        except IndexError:
            self.fd = self._new_instance()
        if self.fd < 0:
            return
        extra = _IN_ONESHOT if oneshot else 0
        for path, mask in self.targets:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask | extra)
            if wd >= 0:
                self.wds[wd] = path
            elif ctypes.get_errno() == errno.ENOENT:
                self.gone = True
            else:  # out of watches (ENOSPC...): back off instead, like without inotify
                self.close()
                return

    @classmethod
    def _new_instance(cls) -> int:
        if cls._libc is None:
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
                libc.inotify_init1  # noqa: B018 - probe: missing outside Linux
            except (OSError, AttributeError):
                cls._libc = False
            else:
                cls._libc = libc
        if not cls._libc:
            return -1
        fd = int(cls._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd >= 0:
            _INHERITED.add(fd)
        return fd

    async def wait(self, timeout: float | None) -> bool:
        """Wait for an event on the targets (True), or ``timeout`` (False)."""
        if self.gone:
            return True
        if self.fd < 0:  # no inotify: bounded back-off, the documented exception
            await _compat.sleep(0.02 if timeout is None else min(timeout, 0.02))
            return True
        if await _compat.wait_readable(self.fd, timeout):
            _Watch.wakeups += 1
            self._drain()
            return True
        return False

    def _drain(self) -> None:
        """Read the queued events: one read takes them all unless it fills its buffer."""
        size = 65536
        with contextlib.suppress(BlockingIOError):
            while True:
                data = os.read(self.fd, size)
                at = 0
                while at + _EVENT.size <= len(data):  # struct inotify_event, then its name
                    wd, mask, _, length = _EVENT.unpack_from(data, at)
                    at += _EVENT.size + length
                    path = self.wds.get(wd)
                    if length or path is None:
                        continue
                    if mask & _IN_IGNORED:  # the watch ended (it fired once, or file deleted)
                        del self.wds[wd]
                        self.gone = self.gone or self.oneshot
                        continue
                    if mask & _IN_CLOSE_WRITE:
                        self.closed.append(path)
                    if mask & _IN_MOVE_SELF:
                        self.moved.append(path)
                    if self.oneshot:  # it ended: its IN_IGNORED follows (in this read, mostly)
                        self.gone = True
                if len(data) < size:
                    return

    def close(self) -> None:
        if self.fd < 0:
            return
        # A watch whose end (IN_IGNORED) we have not read: remove it (this fails for one that
        # fired, which the kernel removed: no matter) and read what is left queued, so that
        # the next waiter to borrow this instance is not woken by our events.
        for wd in self.wds:
            self._libc.inotify_rm_watch(self.fd, wd)
        if self.wds:
            self._drain()
        if self.fd in _INHERITED:  # not closed by a fork meanwhile
            _IDLE_INOTIFY.append(self.fd)
        self.fd = -1


class FileDriver:
    """Driver for ``file:///dir`` (see the module docstring)."""

    scheme: ClassVar[str] = "file"
    capabilities: ClassVar[Capabilities] = Capabilities(
        leases=False,
        fifo=True,
        min_ttl=0.0,
        expiry_slack=0.0,
        wakeup="inotify on the one entry a waiter depends on (its predecessor's close)",
        min_hold=True,  # a kept entry that contenders honour (see the module docstring)
        hold_slack=0.1,
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
        self._queues: dict[str, _Queue] = {}

    def __repr__(self) -> str:
        return f"FileDriver({str(self._dir)!r})"

    def _paths(self, key: str) -> tuple[str, str]:
        kind, _, name = key.partition("/")
        base = os.path.join(self._dir, kind, _stem(name))
        return base + ".lock", base + ".queue"

    def _queue(self, key: str, stale: _Queue | None = None) -> _Queue:
        """The key's open queue file (``stale``: ours, found deleted by hand: reopen it)."""
        queue = self._queues.get(key)
        if queue is None or queue is stale:
            if len(self._queues) >= _OPEN_QUEUES:
                # Drop the oldest (closed once unused); another thread may be doing the same.
                with contextlib.suppress(RuntimeError, StopIteration):
                    self._queues.pop(next(iter(self._queues)), None)
            lock_path, queue_dir = self._paths(key)
            try:
                os.makedirs(queue_dir, exist_ok=True)
                queue = self._queues[key] = _Queue(lock_path, queue_dir)
            except OSError as exc:
                raise BackendError(f"cannot open lock file {lock_path}: {exc.strerror}") from exc
        return queue

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
        remote = network_filesystem(str(self._dir))
        if remote is not None:
            raise ConfigurationError(
                f"cannot use {self._dir} for file locks: it is on a network file system "
                f"({remote}), where OFD locks and inotify are not reliable; use a local "
                "directory, or a server backend (redis://, etcd://, ...) across machines"
            )

    async def close(self) -> None:
        queues, self._queues = self._queues, {}
        for queue in queues.values():
            queue.drop_spares()

    # Leases: the kernel frees a dead process's locks, so a session needs no lease here.

    async def grant_lease(self, ttl: float) -> Lease:
        return Lease(id=new_owner_id(), ttl=ttl)

    async def renew_lease(
        self, lease: Lease, grants: Sequence[Grant], timeout: float
    ) -> Sequence[Grant]:
        return [grant for grant in grants if not self._ours(grant)]

    async def revoke_lease(self, lease: Lease) -> None:
        for grant in list(self._grants):
            if grant.lease is lease:
                await self.release(grant)

    # Contenders.

    async def acquire(
        self, lease: Lease, key: str, owner: OwnerInfo, deadline: float | None, mode: Mode
    ) -> Grant | None:
        entry = self._enqueue(key, owner, mode)
        if isinstance(entry, _Fast):  # the queue was empty: granted at once
            acquired_at = dt.datetime.fromtimestamp(entry.granted / 1e9, dt.UTC)
            grant = Grant(key, owner, entry.seq, lease, acquired_at, data=entry, mode=mode)
            self._grants.add(grant)
            return grant
        watch: _Watch | None = None
        granted = False
        second_look = _SECOND_LOOK[0]
        try:
            while (plan := self._plan(entry)) is not None:
                remaining = None if deadline is None else deadline - _compat.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                if watch is None or watch.targets != plan or watch.gone:
                    # Watch, then look again: a change before the watch was set is not missed.
                    if watch is not None:
                        watch.close()
                    watch = _Watch(plan, oneshot=True)
                    if watch.gone or not self._still_ahead(entry, plan):
                        continue
                if entry.kept_until is not None:  # a kept entry blocks us: wake at its end
                    left = max(0.0, (entry.kept_until - time.monotonic_ns()) / 1e9) + 0.001
                    remaining = left if remaining is None else min(remaining, left)
                # A second look after a quiet while, backed off: the kernel sends a dying
                # owner's IN_CLOSE_WRITE just *before* it drops the owner's lock, so a watch set
                # between the two (a loaded machine, a descheduled vCPU) saw the file locked and
                # gets no event for the unlock.
                quiet = second_look if remaining is None else min(remaining, second_look)
                if await watch.wait(quiet):
                    second_look = _SECOND_LOOK[0]
                else:
                    second_look = min(second_look * 2, _SECOND_LOOK[1])
                # Only an entry's owner opens it for writing (and only a fast holder its hold
                # file), so its IN_CLOSE_WRITE means the owner left or died. A dead process's
                # lock is dropped just *after* that event (the kernel closes, then unlocks; the
                # waiter may already be looking), so it may still look alive: remove it now
                # instead of waiting for an event that will not come. An entry's other watchers
                # then wake (IN_IGNORED) too.
                for path in watch.closed:
                    if entry.ahead is not None and path == entry.ahead[1]:
                        self._bury(entry.queue, entry.ahead[0])
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
                watch.closed.clear()
                if entry.pred is not None and entry.pred[1] in watch.moved:
                    entry.pred_gone = True  # renamed away: it left
                watch.moved.clear()
            now = time.time_ns()
            # Writing the grant time is also the signal a later permit waiter watches for.
            os.pwrite(entry.fd, b"%020d" % now, 0)
            acquired_at = dt.datetime.fromtimestamp(now / 1e9, dt.UTC)
            grant = Grant(key, owner, entry.seq, lease, acquired_at, data=entry, mode=mode)
            self._grants.add(grant)
            granted = True
            return grant
        except OSError as exc:
            raise BackendError(f"file lock {key!r}: {exc}") from exc
        finally:
            entry.drop_pred()
            if watch is not None:
                watch.close()
            if not granted:
                entry.leave()

    def _enqueue(self, key: str, owner: OwnerInfo, mode: Mode) -> _Entry | _Fast:
        """Under the queue file's short lock (and, for the threads sharing that open file, its
        mutex): if nobody holds or waits, take the fast grant; else append our entry, numbered
        and locked before anyone behind it can list it, so entries appear in sequence order."""
        queue = self._queue(key)
        for _ in range(100):  # bounded: each round found the file deleted by hand
            queue.mutex.acquire()
            try:
                _lock_queue(queue.fd, queue.left_fast)
                queue.left_fast = False
                if os.fstat(queue.fd).st_nlink:
                    break
                fcntl.fcntl(queue.fd, _SETLK, _QUNLCK)  # deleted by hand: use the new one
            except OSError as exc:
                queue.mutex.release()
                raise BackendError(f"cannot lock {queue.lock_path}: {exc.strerror}") from exc
            queue.mutex.release()
            queue = self._queue(key, stale=queue)
        else:
            raise BackendError(f"cannot lock {queue.lock_path}: it keeps being deleted")
        try:
            head = os.pread(queue.fd, _SLOT_AT + 8, 0).ljust(_SLOT_AT + 8, b"\0")
            seq, limit = _HEADER.unpack_from(head)
            checked, gen = _FAST.unpack_from(head, _HEADER.size)
            slot_token = _TOKEN.unpack_from(head, _SLOT_AT)[0]  # 0: none, or buried
            if seq == 0:  # a new (or hand-recreated) queue file: continue after what is left
                # (a fast grant leaves no entry: after a used key's queue file was deleted by
                # hand, continue from the clock in µs, which no earlier token can have passed)
                clock = [time.time_ns() // 1000] if queue.reused else []
                seq = max([int(n[:20]) for n in _listdir(queue.dir)] + [_old_token(queue)] + clock)
            # Live entries? Not one was created since the queue was last seen empty (the
            # counter did not move), else look: an exclusive contender needs no more than its
            # predecessor, the last entry made (the tail file names it, if it is the one
            # numbered ``seq``), if that one lives; else the listing. Then the fast holder: the
            # last generation's.
            listing, partial, tail = None, False, None
            if seq != checked:
                tail = None if mode.shared else self._tail(queue, seq)
                listing, partial = ([tail[0]], True) if tail else (_listdir(queue.dir), False)
            queued = partial or (  # (the newest first: entries left in place are older)
                listing is not None
                and any(self._live(queue.dir, n) for n in sorted(listing, reverse=True))
            )
            # (One that released but has not closed yet still counts: no fast grant may take
            # the next generation's hold file while the one before is locked.)
            # (Only whether it holds: its record's checksum is not needed for that.)
            held = bool(gen and slot_token) and _locked(queue.holds[gen % 2])
            if mode.limit and limit != mode.limit:
                if limit and (queued or held):
                    raise limit_mismatch(key.partition("/")[2], limit, mode.limit)
                limit = mode.limit
            if not (queued or held):
                if seq != checked:  # the first fast grant after entries: dead ones' spares
                    _sweep_spares(queue.dir)
                return self._take_fast(queue, seq + 1, limit, gen + 1, mode, owner)
            entry = _Entry(queue, seq + 1, mode, owner.owner)
            entry.listing = listing  # every entry ahead of ours (or our predecessor), for its
            entry.partial, entry.checked = partial, checked  # first plan
            if tail is not None:
                entry.pred, tail = (tail[1], os.path.join(queue.dir, tail[0])), None
            os.pwrite(queue.fd, _HEADER.pack(entry.seq, limit), 0)
            content = _WAITING + b"\n" + owner.meta.encode()
            if not self._reuse(queue, entry, content):
                self._create(queue, entry, content)
            os.pwrite(queue.tail_fd, _TAIL.pack(entry.seq, entry.name.encode()), 0)
            return entry
        except OSError as exc:
            raise BackendError(f"cannot queue for {key!r} in {queue.dir}: {exc}") from exc
        finally:
            fcntl.fcntl(queue.fd, _SETLK, _QUNLCK)
            queue.mutex.release()
            if tail is not None:  # (not given to an entry: failed)
                _INHERITED.discard(tail[1])
                os.close(tail[1])

    @classmethod
    def _tail(cls, queue: _Queue, seq: int) -> tuple[str, int] | None:
        """The last entry made, if it is the one numbered ``seq`` (a contender that wrote no
        tail, such as a fast grant, or another version of tenure, makes them differ), is
        exclusive and lives (under the queue file's lock): its name and a descriptor opened on
        it (for ``_predecessor_done``)."""
        data = os.pread(queue.tail_fd, _TAIL.size, 0)
        if len(data) < _TAIL.size:
            return None
        number, raw = _TAIL.unpack(data)
        name = raw.rstrip(b"\0").decode(errors="replace")
        if number != seq or not name.startswith(f"{seq:020d}-x-"):
            return None
        try:
            fd = os.open(os.path.join(queue.dir, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        _INHERITED.add(fd)
        if _alive(fd):
            return name, fd
        _INHERITED.discard(fd)
        os.close(fd)
        cls._live(queue.dir, name)  # dead: unlink it (left: leave it)
        return None

    @staticmethod
    def _create(queue: _Queue, entry: _Entry, content: bytes) -> None:
        """Make our entry a new file (under the queue file's lock; no spare to reuse), locked
        from its creation on."""
        _sweep_spares(queue.dir)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(entry.path, flags, 0o644)
        except FileNotFoundError:  # the queue directory was deleted by hand
            os.makedirs(queue.dir, exist_ok=True)
            fd = os.open(entry.path, flags, 0o644)
        entry.fd = fd
        _INHERITED.add(fd)
        try:
            fcntl.fcntl(fd, _SETLK, _WRLCK)
            os.write(fd, content)
            entry.perm = stat.S_IMODE(os.fstat(fd).st_mode) & ~_LEFT_BIT
            entry.size = len(content)
        except OSError:
            entry.leave()
            raise

    @staticmethod
    def _reuse(queue: _Queue, entry: _Entry, content: bytes) -> bool:
        """Make our entry of a kept spare (under the queue file's lock): write its content
        while it is marked left (blanks over a longer old one: JSON ignores them), rename it
        to its new place and take the mark off. It stays locked throughout, so it is never
        seen unlocked; marked under its new name only for an instant, while we hold the queue
        file's lock: nobody is behind it yet, and those ahead do not look behind them."""
        # Never the entry we left last (the newest spare): it keeps its content (its grant
        # time) for the waiter behind it (``_predecessor_done``); so two spares alternate.
        while len(queue.spares) >= _SPARES:
            fd, spare, perm, size = queue.spares.pop(0)
            renamed = False
            try:
                os.pwrite(fd, content.ljust(size), 0)
                os.rename(spare, entry.path)
                renamed = True
                os.fchmod(fd, perm)
            except OSError:  # deleted by hand, or its directory: forget it
                if renamed:  # (still locked: make way for a new file of that name)
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                _INHERITED.discard(fd)
                os.close(fd)
                continue
            entry.fd, entry.perm, entry.size = fd, perm, max(size, len(content))
            return True
        return False

    @staticmethod
    def _take_fast(
        queue: _Queue, seq: int, limit: int, gen: int, mode: Mode, owner: OwnerInfo
    ) -> _Fast:
        """The fast grant (under the queue file's lock): lock the generation's hold file and
        write the header and our slot in one write. Nobody else locks that file: its previous
        holder (two generations ago) had left before the last generation was granted."""
        fast = _Fast(queue, seq, gen, mode, owner.owner.encode() + b"\n" + owner.meta.encode())
        path = queue.hold_paths[gen % 2]
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.fcntl(fd, _SETLK, _WRLCK)
        except BlockingIOError:
            # Held by a fast holder of a queue file deleted by hand (numbering began anew): it
            # is lost; a new hold file replaces its own.
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            queue.reopen_holds()
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.fcntl(fd, _SETLK, _WRLCK)
        fast.fd = fd
        _INHERITED.add(fd)
        try:
            state = _HEADER.pack(seq, limit) + _FAST.pack(seq, gen) + fast.slot(fast.blob)
            os.pwrite(queue.fd, state, 0)
        except OSError:
            fast.leave()
            raise
        fast.posted = True
        return fast

    def _bury(self, queue: _Queue, gen: int) -> None:
        """The fast holder of generation ``gen`` closed its hold file: it left or died (its lock
        may not be dropped yet). Blank its slot, so that nobody counts it any more and, if it
        is somehow alive (someone else wrote to its file), it finds its grant lost."""
        with queue.mutex:
            _lock_queue(queue.fd)
            try:
                head = os.pread(queue.fd, _FAST.size, _HEADER.size).ljust(_FAST.size, b"\0")
                if _FAST.unpack(head)[1] == gen:  # not a later one (cannot be: we wait)
                    os.pwrite(queue.fd, b"\0" * 8, _SLOT_AT)
            finally:
                fcntl.fcntl(queue.fd, _SETLK, _QUNLCK)

    def _plan(self, entry: _Entry) -> tuple[tuple[str, int], ...] | None:
        """None if ``entry`` may be granted (``base.grantable``), else the files to watch."""
        queue = entry.queue
        ahead: list[str] | None = None
        if entry.listing is not None:  # listed when we joined: all of it is ahead of us (the
            # entries that left since are found gone below; later ones are behind us)
            ahead, entry.listing = sorted(entry.listing), None
            if entry.partial:  # only our predecessor (opened, seen alive, when we joined): wait
                entry.partial = False  # for it if it has not left since (often it has)
                assert entry.pred is not None
                if not _marked_left(entry.pred[0]):
                    return ((entry.pred[1], _LEFT),)  # (``_still_ahead`` looks closer)
                entry.pred_gone = True
                if self._predecessor_done(entry):
                    return None
                ahead = None
        elif self._predecessor_done(entry):
            return None
        if ahead is None:
            names = sorted(_listdir(queue.dir))
            ahead = names[: bisect_left(names, entry.name)]
        live: list[str] = []  # paths of live contenders before ours that matter, nearest first
        shared_only = entry.mode.shared and not entry.mode.limit  # a reader waits for writers
        exclusive_ahead = False
        entry.kept_until = None
        for name in reversed(ahead):
            if shared_only and name[21] != "x":
                continue
            if self._live(queue.dir, name):
                until = _kept_until(name)
                if until is not None:
                    entry.kept_until = min(until, entry.kept_until or until)
                live.append(os.path.join(queue.dir, name))
                exclusive_ahead = exclusive_ahead or name[21] == "x"
                if len(live) > entry.mode.limit:  # enough to decide
                    break
        if len(live) <= entry.mode.limit:
            # The fast holder, if there is one, is older than every live entry.
            fast = queue.fast_holder()
            if (
                fast is not None
                and fast[2] < entry.name
                and not (shared_only and fast[2][21] != "x")
            ):
                entry.ahead = fast[0], fast[3]
                live.append(fast[3])
                exclusive_ahead = exclusive_ahead or fast[2][21] == "x"
        if grantable(entry.mode, len(live), exclusive_ahead):
            return None
        if entry.mode.limit and len(live) == entry.mode.limit:
            # The first permit waiter: any holder's departure grants it.
            return tuple((path, _LEFT) for path in live)
        if entry.mode.limit:
            # A later permit waiter moves up when its predecessor leaves or is granted.
            return ((live[0], _LEFT | _IN_MODIFY),)
        return ((live[0], _LEFT),)

    @classmethod
    def _predecessor_done(cls, entry: _Entry) -> bool:
        """Whether an exclusive ``entry`` may go without listing the queue: the exclusive entry it
        waited for (``entry.pred``) was granted and is gone. Everything between the two was dead
        when we chose it (dead stays dead), nothing joins ahead of us but a kept entry (``_keep``
        zeroes the queue file's "last seen empty" field: compared with its value when we joined),
        and when an exclusive entry is granted nobody before it is live; so nobody is. Its grant
        time still reads through our descriptor after it was marked left or renamed away; a kept
        entry made its next entry again reads zeros (which only sends us to the listing: that next
        entry is behind us, and cannot be granted before we are)."""
        pred, queue = entry.pred, entry.queue
        if pred is None or entry.mode.shared or not entry.checked:
            return False
        fd, path = pred
        if (
            not entry.pred_gone
            and not _marked_left(fd)
            and cls._live(queue.dir, os.path.basename(path))
        ):
            return False  # still there (a spurious wake-up)
        granted = os.pread(fd, len(_WAITING), 0)
        if not granted.isdigit() or granted == _WAITING:
            return False  # it left without a grant (timed out): others may be ahead
        data = os.pread(queue.fd, _READ_AHEAD, 0)  # the header and the fast holder's slot
        if len(data) < _SLOT_AT or _TOKEN.unpack_from(data, _HEADER.size)[0] != entry.checked:
            return False  # a kept entry may have been put in the queue since
        return queue.fast_holder(data) is None

    @staticmethod
    def _still_ahead(entry: _Entry, plan: tuple[tuple[str, int], ...]) -> bool:
        """After the watch on ``plan`` is set: whether the one contender we wait for (a plain
        wait on one entry or on the fast holder) is still there, so that we may wait without
        listing the queue again: it is ahead of us, its leaving wakes us, and nothing behind
        us can let us in first. Anything else (several files, a permit's wait, a kept entry,
        the file gone or unlocked): False, look again."""
        if len(plan) != 1 or plan[0][1] != _LEFT or _KEPT in plan[0][0]:
            return False
        path = plan[0][0]
        if entry.ahead is not None and path == entry.ahead[1]:
            fast = entry.queue.fast_holder()  # (locked, and not marked released)
            return fast is not None and fast[0] == entry.ahead[0]
        if entry.pred is not None and entry.pred[1] == path:
            # The entry we have open. Its name is never given to another file, so it names
            # that file or nothing (renamed away): looked up by name (a rename or a mark
            # between the watch's lookup of the name and the watch taking hold sends its event
            # to nobody), its lock read through our descriptor.
            try:
                left = os.stat(path).st_mode & _LEFT_BIT
            except FileNotFoundError:
                return False
            return not left and _locked(entry.pred[0])
        # Opened again by its name, even when we have it open, and its mark read: a rename or
        # a mark between the watch's lookup of the name and the watch taking hold sends its
        # event to nobody, and an entry left in place (or renamed) is still locked.
        entry.drop_pred()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        if not _alive(fd):
            os.close(fd)
            return False
        if entry.mode.shared or os.path.basename(path)[21] != "x":
            os.close(fd)
        else:  # kept open: see _predecessor_done
            _INHERITED.add(fd)
            entry.pred = fd, path
        return True

    @staticmethod
    def _live(queue_dir: str, name: str) -> bool:
        """Whether the entry ``name`` (before ours) is alive; a dead one is unlinked (so is a
        kept entry whose hold is over)."""
        path = os.path.join(queue_dir, name)
        if _KEPT in name:
            if _kept_until(name) is not None:
                return True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return False
        state = _entry_state(path)
        if state is not _DEAD:
            return state is _ALIVE
        # Entries are locked from creation until unlinked (also while left in place for their
        # owner's next entry): unlocked and present means its process died (the kernel dropped
        # the lock). Its name is never reused.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return False

    async def release(self, grant: Grant) -> bool:
        """Leave our own entry (the release path, ``_Entry.leave``: marked left in place and kept
        for our next entry, or unlinked and closed), which wakes exactly the contenders watching it.
        A fast grant marks its slot released and closes its hold file (``_Fast.leave``). A release
        before ``min_hold`` first puts a kept entry in our place (``_keep``)."""
        entry: _Entry | _Fast | None = grant.data
        if entry is None:
            return False
        grant.data = None
        self._grants.discard(grant)
        try:
            try:
                ours = entry.ours()
                keep = hold_left(grant)
                if ours and keep:
                    self._keep(grant, entry, keep)
            finally:
                entry.leave()
        except OSError as exc:
            raise BackendError(f"cannot release {grant.key!r}: {exc}") from exc
        return ours

    def _keep(self, grant: Grant, entry: _Entry | _Fast, keep: float) -> None:
        """``min_hold``: put a kept entry in the queue in our place (before we leave it)."""
        queue, owner = entry.queue, grant.owner
        until = time.monotonic_ns() + math.ceil(keep * 1e9)
        name = f"{entry.seq:020d}-{_MODE_CHARS[entry.mode.name]}-{owner.owner}{_KEPT}{until}-"
        name += _boot_id()
        granted = entry.granted if isinstance(entry, _Fast) else int(os.pread(entry.fd, 20, 0))
        aside = os.path.join(os.path.dirname(queue.dir), f".{owner.owner}.kept")
        Path(aside).write_bytes(b"%020d\n" % granted + owner.meta.encode())
        with queue.mutex:
            _lock_queue(queue.fd)
            try:
                os.rename(aside, os.path.join(queue.dir, name))
                # The queue is no longer known empty: the next contender lists it.
                os.pwrite(queue.fd, b"\0" * 8, _HEADER.size)
            finally:
                fcntl.fcntl(queue.fd, _SETLK, _QUNLCK)

    async def check(self, grant: Grant) -> bool:
        return self._ours(grant)

    def _ours(self, grant: Grant) -> bool:
        entry: _Entry | _Fast | None = grant.data
        try:
            return entry is not None and entry.ours()
        except OSError as exc:
            raise BackendError(f"cannot check {grant.key!r}: {exc}") from exc

    async def set_value(self, grant: Grant, value: str) -> bool:
        entry: _Entry | _Fast | None = grant.data
        if entry is None or not self._ours(grant):
            return False
        owner = grant.owner
        record = json.dumps({"host": owner.host, "pid": owner.pid, "value": value}).encode()
        if isinstance(entry, _Fast):
            # The slot is checksummed: a reader that sees half of it reads it again.
            blob = owner.owner.encode() + b"\n" + record
            try:
                os.pwrite(entry.queue.fd, entry.slot(blob), _SLOT_AT)
            except OSError as exc:
                raise BackendError(f"cannot write {entry.queue.lock_path}: {exc}") from exc
            return True
        try:
            # One write, padded with blanks (which JSON ignores) over a longer old record, so a
            # reader never sees half of it.
            old = entry.size - len(_WAITING) - 1
            os.pwrite(entry.fd, record.ljust(old), len(_WAITING) + 1)
            entry.size = max(entry.size, len(_WAITING) + 1 + len(record))
        except OSError as exc:
            raise BackendError(f"cannot write {entry.path}: {exc}") from exc
        return True

    # Inspection.

    async def holder(self, key: str) -> Holder | None:
        found = await self.contenders(key)
        return found[0] if found and not found[0].waiting else None

    async def contenders(self, key: str) -> list[Holder]:
        lock_path, queue_dir = self._paths(key)
        found: list[Holder] = []
        try:
            fast = _read_fast(lock_path)
            if fast is not None:
                found.append(_holder(key, *fast))
            for name in sorted(_listdir(queue_dir)):
                until = _kept_until(name) if _KEPT in name else None
                if until is not None:  # kept under min_hold: an ended holder
                    with contextlib.suppress(FileNotFoundError):
                        kept = _read_all(os.path.join(queue_dir, name))
                        left = max(0.0, (until - time.monotonic_ns()) / 1e9)
                        found.append(
                            dataclasses.replace(
                                _holder(key, name.partition(_KEPT)[0], kept),
                                ended=True,
                                expires_in=left,
                            )
                        )
                    continue
                data = _read_live(os.path.join(queue_dir, name))
                if data is not None:  # None: its process died, or it is leaving
                    found.append(_holder(key, name, data))
        except OSError as exc:
            raise BackendError(f"cannot read {queue_dir}: {exc}") from exc
        return sorted(found, key=lambda h: h.waiting)  # holders first (a stable sort)

    async def changes(self, key: str) -> AsyncIterator[None]:
        queue = self._queue(key)
        # Any entry granted (its grant time written), given a new value, closed or deleted; a
        # fast grant or new value (the queue file written), a fast holder gone (its hold file).
        watch = _Watch(
            [
                (
                    queue.dir,
                    _IN_MODIFY
                    | _IN_ATTRIB
                    | _IN_CLOSE_WRITE
                    | _IN_DELETE
                    | _IN_MOVED_FROM
                    | _IN_MOVED_TO,
                ),
                (queue.lock_path, _IN_MODIFY),
                *((path, _IN_CLOSE_WRITE) for path in queue.hold_paths),
            ]
        )
        try:
            while True:
                yield
                await watch.wait(None)
        finally:
            watch.close()

    def forget_after_fork(self) -> None:
        # The at-fork hook already closed the child's copies of our files.
        for grant in list(self._grants):
            grant.data = None
        self._grants = weakref.WeakSet()
        self._queues = {}  # the fork hook closed the inherited files

    # Listing (``tenure ls``): the kinds' directories, each key's queue read by ``contenders``;
    # a waiter's arrival is its entry's creation. (A name too long for a file name is stored
    # under a hash and cannot be listed.)

    async def in_use(self) -> dict[str, list[Holder]]:
        listing: dict[str, list[Holder]] = {}
        for kind in KINDS:
            for file_name in sorted(_listdir(os.path.join(self._dir, kind))):
                stem = file_name.removesuffix(".lock")
                if stem == file_name or _stem(unquote(stem)) != stem:
                    continue
                key = f"{kind}/{unquote(stem)}"
                found = await self.contenders(key)
                if any(h.waiting for h in found):
                    queue_dir = self._paths(key)[1]
                    since: dict[str, dt.datetime] = {}
                    for entry in _listdir(queue_dir):
                        with contextlib.suppress(OSError):
                            at = os.stat(os.path.join(queue_dir, entry)).st_mtime
                            since[entry[23:]] = dt.datetime.fromtimestamp(at, dt.UTC)
                    found = [
                        dataclasses.replace(h, waiting_since=since.get(h.owner)) if h.waiting else h
                        for h in found
                    ]
                if found:
                    listing[key] = found
        return listing

    def namespace_changes(self) -> AsyncIterator[None]:
        return refreshes()  # (an inotify watch per key would be a watch per key per listing)


#: In a kept entry's name, between the entry's own name and ``<until>-<boot>``.
_KEPT = ".kept-"
_BOOT: list[str] = []


def _boot_id() -> str:
    """This boot of the machine (Linux; "0" elsewhere): a kept entry's clock is only valid in
    the boot that wrote it."""
    if not _BOOT:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _BOOT.append(f.read().strip().replace("-", "")[:12] or "0")
        except OSError:
            _BOOT.append("0")
    return _BOOT[0]


def _kept_until(name: str) -> int | None:
    """A kept entry's end (monotonic ns) while its hold lasts, else None (over, another boot,
    or not a kept entry)."""
    _, sep, rest = name.partition(_KEPT)
    until, _, boot = rest.partition("-")
    if not sep or not until.isdigit() or boot != _boot_id():
        return None
    return int(until) if int(until) > time.monotonic_ns() else None


def _read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _listdir(path: str) -> list[str]:
    """The entries in a queue directory (not the hidden spares)."""
    try:
        return [name for name in os.listdir(path) if name[0] != "."]
    except FileNotFoundError:
        return []


def _sweep_spares(queue_dir: str) -> None:
    """Delete the kept entries of processes that died (unlocked): entries left in place, and an
    older version's hidden spares; a live process's are locked. (Only those: a new entry is
    unlocked for an instant while it is made, unmarked; this may run outside the queue file's
    lock.)"""
    try:
        names = os.listdir(queue_dir)
    except FileNotFoundError:
        return
    for name in names:
        if name[0] == "." and not name.startswith(_SPARE):
            continue
        if name[0] != ".":
            try:
                if not os.stat(os.path.join(queue_dir, name)).st_mode & _LEFT_BIT:
                    continue  # (a mark is set only on a locked entry, never taken off a dead one)
            except FileNotFoundError:
                continue
        FileDriver._live(queue_dir, name)  # (which unlinks a dead one)


def _read_fast(lock_path: str) -> tuple[str, bytes] | None:
    """The live fast holder of a queue file, as an entry's name and content, or None."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        gen, slot = _read_slot(fd)
    finally:
        os.close(fd)
    if slot is None or slot[4]:
        return None
    token, granted, mode, blob, _ = slot
    if not _path_locked(f"{lock_path.removesuffix('.lock')}.hold{gen % 2}"):
        return None
    owner, _, meta = blob.partition(b"\n")
    return f"{token:020d}-{mode}-{owner.decode()}", b"%020d\n" % granted + meta


def _read_live(path: str) -> bytes | None:
    """An entry's content, or None if it is gone, left (marked) or its lock is (its process
    died)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        if info.st_mode & _LEFT_BIT or not _locked(fd):
            return None
        return os.pread(fd, info.st_size, 0)
    finally:
        os.close(fd)


_GONE, _ALIVE, _LEFT_IN_PLACE, _DEAD = "gone", "alive", "left", "dead"


def _entry_state(path: str) -> str:
    """An entry file's state: gone (no such file), alive (locked), left (locked, marked left
    by its owner, who keeps it for a next entry) or dead (unlocked: its process died)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return _GONE
    try:
        if not _locked(fd):
            return _DEAD
        return _LEFT_IN_PLACE if _marked_left(fd) else _ALIVE
    finally:
        os.close(fd)


def _old_token(queue: _Queue) -> int:
    """The last token of the layout before the queue (``<stem>.json``), so that tokens keep
    increasing across the upgrade."""
    try:
        with open(queue.lock_path.removesuffix(".lock") + ".json", "rb") as f:
            return int(json.loads(f.read()).get("token", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def _holder(key: str, name: str, data: bytes) -> Holder:
    head, _, meta = data.partition(b"\n")
    granted = int(head or b"0")
    try:
        record: dict[str, Any] = json.loads(meta or b"{}")
    except ValueError:  # its owner is writing it (first write): no record yet
        record = {}
    return Holder(
        name=key.partition("/")[2],
        owner=name[23:],
        host=str(record.get("host", "")),
        pid=int(record.get("pid", 0)),
        token=int(name[:20]) if granted else 0,
        acquired_at=dt.datetime.fromtimestamp(granted / 1e9, dt.UTC) if granted else None,
        expires_in=None,
        value=record.get("value"),
        mode=_MODE_NAMES[name[21]],
        waiting=not granted,
    )
