"""Plain data shared by the core and the drivers: ``Holder`` and ``Capabilities``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

__all__ = ["Capabilities", "Holder"]


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds (or waits for) a lock, as the backend reports it.

    ``expires_in`` is ``None`` where entries do not expire (the file backend); ``value`` is an
    election candidate's value, or ``None`` for plain locks; ``token`` is 0 for a waiter that has
    no token yet. ``mode`` is ``"exclusive"`` (a lock, an election, an rwlock's writer),
    ``"shared"`` (an rwlock's reader) or ``"permit"`` (a semaphore's); ``waiting`` is True for a
    contender that is queued, not granted. ``waiting_since`` is when a queued contender arrived,
    where the backend records it: in ``Client.in_use`` on etcd, ZooKeeper, PostgreSQL and files
    (and in ``contenders`` on etcd and ZooKeeper); Redis keeps no arrival time (``None``).
    ``ended`` is True for a holder that released before its ``min_hold`` ran out: its entry is
    kept (nobody else is granted) until then, ``expires_in`` from now where the backend says.
    """

    name: str
    owner: str
    host: str
    pid: int
    token: int
    acquired_at: dt.datetime | None
    expires_in: float | None = None
    value: str | None = None
    mode: str = "exclusive"
    waiting: bool = False
    waiting_since: dt.datetime | None = None
    ended: bool = False


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do; the contract suite skips only what a backend cannot do by design.

    - ``leases``: entries expire when their session stops renewing (False: the file backend, where
      the kernel frees a dead process's lock and keeps a paused one's).
    - ``fifo``: grants follow arrival order across processes.
    - ``min_ttl``: the smallest session TTL the backend enforces, in seconds.
    - ``expiry_slack``: seconds past the TTL before another client can acquire a dead holder's lock.
    - ``wakeup``: how waiters are woken (for the docs and ``tenure status``).
    - ``min_hold``: the backend keeps a released entry until ``min_hold`` after its grant
      (``Client.lock(name, min_hold=S)``); ``hold_slack``: how much later than that the kept
      entry may end (the server's expiry granularity, in seconds).
    """

    leases: bool
    fifo: bool
    min_ttl: float
    expiry_slack: float
    wakeup: str
    min_hold: bool = False
    hold_slack: float = 0.0


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
