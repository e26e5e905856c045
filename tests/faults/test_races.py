"""Races the nemesis can only hit by luck, forced deterministically at the exact point.

``Session._acquire`` refuses a grant if the session was lost while the client was queued, but
the check and the tracking of the grant (``Session._track``) are two steps, and the session's
deadline alarm runs in another thread (another task in asyncio). If the alarm fires between
them, ``_expire`` notifies only the locks already tracked, and the new grant is then filed into a
session that is lost and will never renew it nor report it lost: ``acquire`` returns True,
``held`` stays True and ``lost`` is never set, while the server lets the entry expire after the
TTL and grants the lock to someone else. The test runs the alarm's ``_expire`` at that point.
Found by this test and fixed in f906959 (``_track`` re-checks the session under its state lock);
it stays as a regression test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

import tenure
from tenure._sync.session import Session
from tests.servers import RedisServer

pytestmark = [pytest.mark.faults, pytest.mark.server("redis")]


def test_a_session_lost_between_grant_and_tracking_marks_the_lock_lost(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{redis_server.url}?namespace=race{uuid.uuid4().hex[:8]}"
    original: Callable[..., Any] = Session._track

    def alarm_fires_first(self: Session, grant: Any, lock: Any) -> None:
        # What the deadline alarm thread does if it runs right here (a GIL switch suffices).
        self._expire("no renewal succeeded before the local deadline (injected)")
        original(self, grant, lock)

    with tenure.connect(url, ttl=1.0) as a, tenure.connect(url, ttl=1.0) as b:
        session = a.session(ttl=1.0)
        lock = session.lock("raced")
        monkeypatch.setattr(Session, "_track", alarm_fires_first)
        granted = lock.acquire(timeout=5)
        monkeypatch.undo()
        assert session.lost.is_set()
        # The other client gets the lock once the unrenewed entry expires (after the TTL)...
        other = b.lock("raced")
        assert other.acquire(timeout=10)
        # ...by which time the first one must have been told (before the fix: held, never lost).
        assert not granted or lock.lost.is_set(), (
            f"acquire returned {granted}; held={lock.held}, lost={lock.lost.is_set()} "
            f"while another client holds token {other.token}"
        )
        other.release()
