"""The history checker on hand-made histories, with and without violations."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.history import (
    Event,
    Fault,
    check,
    duplicate_tokens,
    excess,
    expired_session_grants,
    late_losses,
    late_permit_losses,
    lost_updates,
    measure,
    overlaps,
    pool_excess,
    stale_reads,
    stale_writes,
    summarize,
    tenures,
    unexplained_excess,
)
from tests.faults.resource import Pool, Store, StoreOp

pytestmark = pytest.mark.faults

MS = 1_000_000


def tenure(
    client: str, token: int, start: int, end: int, session: int = 1, mode: str = ""
) -> list[Event]:
    return [
        Event(start * MS, client, "enter", token, session, mode=mode),
        Event(end * MS, client, "exit", token, session),
    ]


def reader(client: str, token: int, start: int, end: int) -> list[Event]:
    return tenure(client, token, start, end, mode="shared")


def writer(client: str, token: int, start: int, end: int) -> list[Event]:
    return tenure(client, token, start, end, mode="exclusive")


def permit(client: str, token: int, start: int, end: int) -> list[Event]:
    return tenure(client, token, start, end, mode="permit")


def write(t: int, client: str, token: int, element: int, ok: bool = True) -> StoreOp:
    return StoreOp(t * MS, client, "write", token, ok, element)


def read(t: int, client: str, token: int, ok: bool = True) -> StoreOp:
    return StoreOp(t * MS, client, "read", token, ok)


def shared_read(t: int, client: str, token: int, ok: bool = True) -> StoreOp:
    return StoreOp(t * MS, client, "shared-read", token, ok)


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


# -- rwlock -------------------------------------------------------------------------------------


def test_readers_may_overlap_but_not_with_a_writer() -> None:
    shared = reader("a", 1, 0, 10) + reader("b", 2, 5, 20) + writer("c", 3, 20, 30)
    assert overlaps(tenures(shared)) == []
    # The seeded violation: a writer granted while a reader still reads.
    bad = reader("a", 1, 0, 10) + reader("b", 2, 5, 25) + writer("c", 3, 20, 30)
    assert [(p[0].client, p[1].client) for p in overlaps(tenures(bad))] == [("b", "c")]
    # And a reader inside a writer's tenure.
    bad = writer("a", 1, 0, 10) + reader("b", 2, 5, 25)
    assert [(p[0].mode, p[1].mode) for p in overlaps(tenures(bad))] == [("exclusive", "shared")]


def test_stale_reads_are_reads_older_than_an_accepted_writers_operation() -> None:
    ops = [
        shared_read(1, "a", 2),
        shared_read(2, "b", 1),  # an older concurrent reader: fine
        read(3, "c", 3),
        write(4, "c", 3, 30),
        shared_read(5, "a", 2),  # the seeded violation: a's grant predates c's
        shared_read(6, "d", 4),
    ]
    assert stale_reads(ops) == [ops[4]]
    assert stale_writes(ops) == []
    # A writer's read alone makes an older reader stale (it holds the exclusive grant);
    # a refused read is not accepted.
    assert stale_reads([read(1, "c", 3), shared_read(2, "a", 2)]) != []
    assert stale_reads([read(1, "c", 3), shared_read(2, "a", 2, ok=False)]) == []
    # A writer older than a reader the store saw is a stale write.
    assert stale_writes([shared_read(1, "a", 4), write(2, "c", 3, 30)]) != []


def test_store_rwlock_fencing(tmp_path: Path) -> None:
    fenced, unfenced = Store(tmp_path, fenced=True), Store(tmp_path, fenced=False)
    for store in (fenced, unfenced):
        assert store.shared_read(2, "b") == []
        assert store.shared_read(1, "a") == []  # concurrent readers never refuse each other
    assert not fenced.write(1, "w", [], 10)  # below a reader's token
    for store in (fenced, unfenced):
        assert store.read(3, "c") == []
        assert store.write(3, "c", [], 30)
    assert fenced.shared_read(2, "b") is None  # older than the writer: refused
    assert fenced.shared_read(4, "d") == [30]
    assert unfenced.shared_read(2, "b") == [30]
    assert stale_reads(fenced.history()) == []
    assert [op.client for op in stale_reads(unfenced.history())] == ["b"]
    assert [op.ok for op in fenced.history()] == [True, True, False, True, True, False, True]


def test_late_losses_count_only_the_next_conflicting_grant() -> None:
    # Reader a's lost after reader b's grant (no conflict), before writer c's: on time.
    on_time = [*reader("a", 1, 0, 5), *reader("b", 2, 1, 9), Event(6 * MS, "a", "lost", 1)]
    on_time += writer("c", 3, 10, 12)
    assert late_losses(on_time) == []
    # After the writer's grant: late.
    late = [*reader("a", 1, 0, 5), *reader("b", 2, 1, 9), *writer("c", 3, 10, 12)]
    late.append(Event(11 * MS, "a", "lost", 1))
    assert [(x.client, g.client) for x, g in late_losses(late)] == [("a", "c")]
    # A writer's lost after the next reader's grant: late.
    late = [*writer("a", 1, 0, 5), *reader("b", 2, 6, 9), Event(7 * MS, "a", "lost", 1)]
    assert [(x.client, g.client) for x, g in late_losses(late)] == [("a", "b")]


def test_measure_a_readers_takeover_is_the_next_writers_grant() -> None:
    events = [*reader("a", 7, 10, 900), *reader("b", 8, 20, 30), *writer("c", 9, 1000, 1010)]
    events.append(Event(950 * MS, "a", "lost", 7, 1))
    m = measure(Fault("cut-off-holder", 100 * MS, 1100 * MS, "a", 7, 1), events)
    assert m.takeover_after == pytest.approx(0.9)
    assert m.lost_before_takeover is True


def test_check_an_rwlock_run() -> None:
    events = [*reader("a", 1, 0, 100), *reader("b", 2, 5, 20), *writer("c", 3, 50, 60)]
    fenced = [shared_read(1, "a", 1), read(51, "c", 3), write(52, "c", 3, 30)]
    fenced.append(shared_read(96, "a", 1, ok=False))
    unfenced = [*fenced[:3], shared_read(96, "a", 1)]
    report = check(events, fenced, [30], unfenced, [30])
    assert report.overlaps == report.unexplained_overlaps == 1  # a (reader) with c (writer)
    assert report.stale_reads_unfenced == 1
    assert report.stale_reads_fenced == 0
    assert report.most_shared == 2
    assert not report.safe()
    paused = Fault("pause-holder", 10 * MS, 95 * MS, "a", 1, 1)
    assert check(events, fenced, [30], unfenced, [30], faults=[paused]).safe()
    # The fence broken: the stale read accepted.
    report = check(events, unfenced, [30], unfenced, [30], faults=[paused])
    assert report.stale_reads_fenced == 1
    assert not report.safe()


# -- semaphore ----------------------------------------------------------------------------------


def test_excess_counts_the_tenures_live_at_once() -> None:
    two = permit("a", 1, 0, 10) + permit("b", 2, 5, 20) + permit("c", 3, 10, 30)
    assert excess(tenures(two), 2) == []  # c starts as a ends: never three at once
    # The seeded violation: three permits at once with limit 2.
    three = permit("a", 1, 0, 10) + permit("b", 2, 5, 20) + permit("c", 3, 8, 30)
    found = excess(tenures(three), 2)
    assert [(e.start, e.end, e.count, e.clients) for e in found] == [
        (8 * MS, 10 * MS, 3, ("a", "b", "c"))
    ]
    assert len(excess(tenures(three), 1)) == 1  # one episode, 5..20 ms
    assert excess(tenures(three), 3) == []
    # Explained when the paused holder is left out; not when the pause was another client's.
    paused = Fault("pause-holder", 1 * MS, 9 * MS, "a", 1, 1)
    assert unexplained_excess(tenures(three), 2, [paused]) == []
    other = Fault("pause-holder", 1 * MS, 9 * MS, "d", 4, 1)
    assert len(unexplained_excess(tenures(three), 2, [other])) == 1


def test_pool_excess_and_the_pool(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    pool.occupy(1, "a")
    pool.occupy(2, "b")
    pool.vacate(1, "a")
    pool.occupy(3, "c")
    assert pool_excess(pool.history(), 2) == []
    pool.occupy(4, "d")  # the seeded violation: a third occupant
    pool.evict("b")
    ops = pool.history()
    assert [op.size for op in ops] == [1, 2, 1, 2, 3, 2]
    assert pool_excess(ops, 2) == [ops[4]]


def test_late_permit_losses() -> None:
    # Limit 2: a and b hold; c is granted while both believe they hold; a's lost comes later.
    late = [*permit("a", 1, 0, 50), *permit("b", 2, 5, 40), *permit("c", 3, 20, 30)]
    late.append(Event(25 * MS, "a", "lost", 1))
    assert [(x.client, g.client) for x, g in late_permit_losses(late, 2)] == [("a", "c")]
    # Its lost before c's grant: on time.
    on_time = [*late[:6], Event(15 * MS, "a", "lost", 1)]
    assert late_permit_losses(on_time, 2) == []
    # b had left before c's grant: c took b's permit, so a's later lost is not late.
    left = [*permit("a", 1, 0, 50), *permit("b", 2, 5, 15), *permit("c", 3, 20, 30)]
    left.append(Event(25 * MS, "a", "lost", 1))
    assert late_permit_losses(left, 2) == []
    # b had died (no exit) before c's grant: the same; alive to the end, it held.
    died = [e for e in late if not (e.client == "b" and e.kind == "exit")]
    assert late_permit_losses(died, 2, deaths={"b": 10 * MS}) == []
    assert late_permit_losses(died, 2) != []


def test_duplicate_tokens() -> None:
    assert duplicate_tokens(permit("a", 1, 0, 5) + permit("b", 2, 1, 6)) == []
    dup = permit("a", 1, 0, 5) + permit("b", 1, 1, 6)
    assert [e.client for e in duplicate_tokens(dup)] == ["b"]


def test_measure_a_permits_takeover() -> None:
    # Limit 2: a's permit is taken by the grant made while another one is held (d at 1000),
    # not by c's (granted at 400 while a's and b's... b had left: c took b's).
    events = [*permit("a", 7, 10, 20), *permit("b", 6, 0, 300), *permit("c", 8, 400, 1200)]
    events += permit("d", 9, 1000, 1100)
    events.append(Event(900 * MS, "a", "lost", 7, 1))
    m = measure(Fault("cut-off-holder", 15 * MS, 1100 * MS, "a", 7, 1), events, limit=2)
    assert m.takeover_after == pytest.approx(0.985)
    assert m.lost_before_takeover is True


def test_check_a_semaphore_run() -> None:
    events = [*permit("a", 1, 0, 100), *permit("b", 2, 5, 20), *permit("c", 3, 50, 60)]
    events.append(Event(99 * MS, "a", "lost", 1, 1))
    report = check(events, [], [], [], [], limit=1)
    assert report.limit == 1
    assert report.excess == report.unexplained_excess == 2
    assert report.most_concurrent == 2
    assert report.late_losses == report.unexplained_late_losses == 1
    assert report.overlaps == 0  # permits are counted, never paired
    assert not report.safe()
    assert check(events, [], [], [], [], limit=2).safe()
    paused = Fault("pause-holder", 10 * MS, 95 * MS, "a", 1, 1)
    report = check(events, [], [], [], [], faults=[paused], limit=1)
    assert report.excess == 2
    assert report.unexplained_excess == report.unexplained_late_losses == 0
    assert report.safe()


def test_events_without_a_mode_are_exclusive() -> None:
    line = '{"t": 1, "client": "a", "kind": "enter", "token": 1, "session": 1, "detail": ""}'
    event = Event.from_json(line)
    assert event.mode == ""
    assert tenures([event])[0].mode == "exclusive"
    assert Event.from_json(Event(1, "a", "enter", 1, 1, mode="shared").to_json()).mode == "shared"
