"""The history checker on hand-made histories, with and without violations."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.history import (
    Event,
    Fault,
    check,
    expired_session_grants,
    late_losses,
    lost_updates,
    measure,
    overlaps,
    stale_writes,
    summarize,
    tenures,
)
from tests.faults.resource import Store, StoreOp

pytestmark = pytest.mark.faults

MS = 1_000_000


def tenure(client: str, token: int, start: int, end: int, session: int = 1) -> list[Event]:
    return [
        Event(start * MS, client, "enter", token, session),
        Event(end * MS, client, "exit", token, session),
    ]


def write(t: int, client: str, token: int, element: int, ok: bool = True) -> StoreOp:
    return StoreOp(t * MS, client, "write", token, ok, element)


def read(t: int, client: str, token: int, ok: bool = True) -> StoreOp:
    return StoreOp(t * MS, client, "read", token, ok)


def test_sequential_tenures_do_not_overlap() -> None:
    events = tenure("a", 1, 0, 10) + tenure("b", 2, 10, 20) + tenure("a", 3, 21, 30)
    assert overlaps(tenures(events)) == []


def test_overlapping_tenures_are_found() -> None:
    events = tenure("a", 1, 0, 10) + tenure("b", 2, 5, 20) + tenure("c", 3, 25, 30)
    pairs = overlaps(tenures(events))
    assert [(p[0].client, p[1].client) for p in pairs] == [("a", "b")]


def test_a_long_tenure_overlaps_everything_inside_it() -> None:
    # A paused ex-holder: its critical section spans two later ones.
    events = tenure("a", 1, 0, 100) + tenure("b", 2, 10, 20) + tenure("c", 3, 30, 40)
    assert len(overlaps(tenures(events))) == 2


def test_a_killed_clients_tenure_ends_at_its_death() -> None:
    events = [Event(0, "a", "enter", 1, 1), *tenure("b", 2, 10, 20)]
    assert overlaps(tenures(events, deaths={"a": 5 * MS})) == []
    # Never closed and not killed: open to the end of the history, so it overlaps.
    found = tenures(events)
    assert [x.closed for x in found] == [False, True]
    assert len(overlaps(found)) == 1


def test_stale_writes_are_writes_below_the_highest_accepted_token() -> None:
    ops = [
        read(1, "a", 1),
        read(2, "b", 2),
        write(3, "b", 2, 20),
        write(4, "a", 1, 10),  # stale: token 2 was accepted before
        write(5, "c", 3, 30),
    ]
    assert stale_writes(ops) == [ops[3]]
    # A refused write is not "accepted", and a newer holder's read counts as seen.
    assert stale_writes([read(1, "b", 2), write(2, "a", 1, 10, ok=False)]) == []
    assert stale_writes([read(1, "b", 2), write(2, "a", 1, 10)]) != []


def test_lost_updates_are_acknowledged_elements_missing_at_the_end() -> None:
    ops = [write(1, "a", 1, 10), write(2, "b", 2, 20), write(3, "c", 1, 30, ok=False)]
    assert lost_updates(ops, [10, 20]) == set()
    assert lost_updates(ops, [10]) == {20}  # 30 was refused, so never acknowledged


def test_grants_in_an_expired_session_are_found() -> None:
    ok = [Event(1, "a", "session-lost", session=1), Event(2, "a", "enter", 5, session=2)]
    assert expired_session_grants(ok) == []
    bad = [Event(1, "a", "session-lost", session=1), Event(2, "a", "enter", 5, session=1)]
    assert expired_session_grants(bad) == [bad[1]]


def test_late_losses_are_lost_events_after_the_next_grant() -> None:
    on_time = [*tenure("a", 1, 0, 5), Event(6 * MS, "a", "lost", 1), *tenure("b", 2, 7, 9)]
    assert late_losses(on_time) == []
    late = [*tenure("a", 1, 0, 5), *tenure("b", 2, 6, 9), Event(7 * MS, "a", "lost", 1)]
    assert [(x.client, g.client) for x, g in late_losses(late)] == [("a", "b")]


def test_measure_lost_detection_and_takeover() -> None:
    events = [
        Event(10 * MS, "a", "enter", 7, 1),
        Event(900 * MS, "a", "lost", 7, 1),
        Event(1000 * MS, "b", "enter", 8, 1),
    ]
    fault = Fault("cut-off-holder", 100 * MS, 1100 * MS, "a", 7, 1)
    m = measure(fault, events)
    assert m.lost_after == pytest.approx(0.8)
    assert m.takeover_after == pytest.approx(0.9)
    assert m.lost_before_takeover is True
    # A lost after the takeover is reported as such.
    late = [*events[:1], events[2], Event(1200 * MS, "a", "lost", 7, 1)]
    assert measure(fault, late).lost_before_takeover is False
    # A waiter's fault is measured by its session's loss; there is no takeover.
    waiter = Fault("cut-off-waiter", 100 * MS, 0, "c", 0, 3)
    m = measure(waiter, [*events, Event(950 * MS, "c", "session-lost", session=3)])
    assert m.lost_after == pytest.approx(0.85)
    assert m.takeover_after is None
    assert summarize([0.1, 0.3, None]) == "200 / 300"
    assert summarize([None]) == "-"


def test_check_finds_every_violation_of_an_unfenced_pause() -> None:
    """The negative control in miniature: a paused holder's stale write is caught."""
    events = [
        *tenure("a", 1, 0, 100),  # paused from 5 to 95 between read and write
        *tenure("b", 2, 50, 60),
        Event(99 * MS, "a", "lost", 1, 1),  # after b's grant
    ]
    unfenced = [
        read(1, "a", 1),
        read(51, "b", 2),
        write(55, "b", 2, 20),
        write(96, "a", 1, 10),  # the stale write: overwrites b's element
    ]
    fenced = [
        read(1, "a", 1),
        read(51, "b", 2),
        write(55, "b", 2, 20),
        write(96, "a", 1, 10, False),
    ]
    report = check(events, fenced, [20], unfenced, [10])
    assert report.acquisitions == 2
    assert report.overlaps == report.unexplained_overlaps == 1
    assert report.stale_unfenced == 1
    assert report.lost_updates_unfenced == 1
    assert report.stale_fenced == report.lost_updates_fenced == 0
    assert report.rejected_fenced == 1
    assert report.late_losses == report.unexplained_late_losses == 1
    assert not report.safe()
    # Told that `a` was SIGSTOPped, the overlap and the late loss are explained.
    paused = Fault("pause-holder", 5 * MS, 95 * MS, "a", 1, 1)
    report = check(events, fenced, [20], unfenced, [10], faults=[paused])
    assert report.unexplained_overlaps == report.unexplained_late_losses == 0
    assert report.safe()


def test_check_sees_a_broken_fence() -> None:
    fenced = [read(1, "b", 2), write(2, "b", 2, 20), write(3, "a", 1, 10)]
    report = check(tenure("b", 2, 0, 5), fenced, [10], [], [])
    assert report.stale_fenced == 1
    assert report.lost_updates_fenced == 1
    assert not report.safe()


def test_store_fencing_and_history(tmp_path: Path) -> None:
    fenced, unfenced = Store(tmp_path, fenced=True), Store(tmp_path, fenced=False)
    for store in (fenced, unfenced):
        seen = store.read(1, "a")
        assert seen == []
        assert store.read(2, "b") == []  # a newer holder reads first
        assert store.write(2, "b", [], 20)
    # The old holder's write: refused by the fence, accepted by its twin.
    assert not fenced.write(1, "a", [], 10)
    assert fenced.read(1, "a") is None
    assert unfenced.write(1, "a", [], 10)
    assert fenced.final() == [20]
    assert unfenced.final() == [10]
    assert stale_writes(fenced.history()) == []
    assert [op.client for op in stale_writes(unfenced.history())] == ["a"]
    assert lost_updates(unfenced.history(), unfenced.final()) == {20}
    assert [op.ok for op in fenced.history()] == [True, True, True, False, False]
