"""The history checker: pure functions over what the workers, the store and the nemesis recorded.

Inputs (all times are ``time.monotonic_ns()``, one clock for every process of the machine):

* worker :class:`Event` s, kinds: ``start`` (detail: pid), ``acquiring``, ``enter`` (token,
  session, mode; detail ``lost`` if the lock was already flagged lost when ``acquire`` returned),
  ``exit`` (token; recorded before ``release``), ``released``, ``lost`` (the lock's ``on_lost``,
  token of the tenure), ``session-lost`` (session), ``error`` (detail), ``stop``;
* the stores' :class:`~tests.faults.resource.StoreOp` histories and final sets (a semaphore
  run: the pool's history);
* the nemesis's :class:`Fault` s and the kill times of the clients it SIGKILLed.

Every tenure has a mode: ``exclusive`` (a lock, an rwlock's writer), ``shared`` (an rwlock's
reader) or ``permit`` (a semaphore's). Checks:

* **overlaps**: two tenures (enter..exit of one client's grant) of different clients intersect,
  and at least one of them is exclusive (readers may overlap each other; permits are counted by
  **excess** instead).
  A killed client's tenure ends at its kill; one never closed runs to the end of the history.
  An overlap is *explained* when the earlier tenure's process was SIGSTOPped by the nemesis, or
  the server lost its data (killed and restarted) during that tenure: no lock can stop a paused
  process, and a server that forgets its keys voids the lease; there, only fencing protects the
  resource. Unexplained overlaps are lock bugs.
* **stale writes accepted**: a write the store accepted although it had already accepted an
  operation with a higher token (in the store's own order). Fenced store: must be 0.
* **stale reads accepted** (rwlock): a reader's read the store accepted although it had already
  accepted an exclusive operation (a writer's read or write) with a higher token: the reader's
  grant predates that writer's, so it was gone when the writer got in. Fenced store: must be 0.
* **lost updates**: elements of accepted writes missing from the final set.
* **expired-session grants**: a grant (``enter``) recorded after the client's session had been
  reported lost (``session-lost`` of the same session, earlier).
* **late losses**: a tenure's ``lost`` fired after the next *conflicting* grant of the name (§2.4
  says it must fire before): for an exclusive tenure the next grant of a newer token, for a
  reader the next writer's. Permits: see below.
* **duplicate tokens**: a token granted twice (tokens are strictly increasing per name).

Semaphore runs (limit ``L``):

* **excess**: the number of tenures live at each instant, over ``L``. An *episode* is a maximal
  interval with more than ``L``; it is explained when the tenures a lock could not have stopped
  (their process SIGSTOPped during them, or the server lost its data during them: the same
  causes as for overlaps) account for the excess, i.e. the others alone are at most ``L``.
* **pool excess**: the pool's own count of occupants (one flock, one order) over ``L``.
* **late permit losses**: a permit is *held in its holder's view* at ``t`` from its ``enter`` until
  its ``exit``, its process's death or its ``lost``, whichever comes first. If a grant ``G`` is made
  while ``L`` or more permits are held in their holders' view, the server could only grant ``G``
  because one of them was already gone; each of them whose ``lost`` fires after ``G`` was told
  late. A permit's ``lost`` is reported once, with the first such ``G``. For ``L = 1`` this is the
  lock's rule for a tenure still in progress at the next grant.
"""

from __future__ import annotations

import bisect
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tests.faults.resource import StoreOp

__all__ = [
    "Event",
    "Fault",
    "FaultMeasure",
    "Report",
    "Tenure",
    "check",
    "duplicate_tokens",
    "excess",
    "expired_session_grants",
    "late_losses",
    "late_permit_losses",
    "lost_updates",
    "measure",
    "overlaps",
    "pool_excess",
    "stale_reads",
    "stale_writes",
    "summarize",
    "tenures",
]

#: Faults that void the lease without the holder being able to notice in time (see module doc).
PAUSE_FAULTS = frozenset({"pause-holder"})
#: (A failover of asynchronously replicated Redis may lose the newest writes, the lock's too.)
DATA_LOSS_FAULTS = frozenset({"kill-server", "failover", "cluster-failover"})


@dataclass(frozen=True, slots=True)
class Event:
    t: int
    client: str
    kind: str
    token: int = 0
    session: int = 0
    detail: str = ""
    mode: str = ""  # on ``enter``: "exclusive", "shared" or "permit" ("" = exclusive)

    def to_json(self) -> str:
        return json.dumps(
            {
                "t": self.t,
                "client": self.client,
                "kind": self.kind,
                "token": self.token,
                "session": self.session,
                "detail": self.detail,
                "mode": self.mode,
            }
        )

    @classmethod
    def from_json(cls, line: str) -> Event:
        d = json.loads(line)
        mode = d.get("mode", "")
        return cls(d["t"], d["client"], d["kind"], d["token"], d["session"], d["detail"], mode)


@dataclass(frozen=True, slots=True)
class Fault:
    """One injection: ``t`` when it started, ``t_end`` when it was healed (0: not healed)."""

    kind: str
    t: int
    t_end: int
    victim: str  # client id ("" for a server fault with no holder)
    token: int  # the victim's token at the injection (0 if it held nothing)
    session: int = 0


@dataclass(frozen=True, slots=True)
class Tenure:
    client: str
    token: int
    session: int
    start: int
    end: int  # exit, kill time, or the end of the history
    closed: bool  # True if ended by the client's own ``exit``
    mode: str = "exclusive"


def tenures(events: Iterable[Event], deaths: Mapping[str, int] | None = None) -> list[Tenure]:
    """Pair each ``enter`` with its ``exit`` (same client and token)."""
    deaths = deaths or {}
    evs = sorted(events, key=lambda e: e.t)
    horizon = evs[-1].t if evs else 0
    open_: dict[tuple[str, int], Event] = {}
    found: list[Tenure] = []
    for e in evs:
        if e.kind == "enter":
            open_[(e.client, e.token)] = e
        elif e.kind == "exit" and (e.client, e.token) in open_:
            s = open_.pop((e.client, e.token))
            found.append(Tenure(e.client, e.token, s.session, s.t, e.t, True, _mode(s)))
    for (client, token), s in open_.items():
        end = deaths.get(client, horizon)
        found.append(Tenure(client, token, s.session, s.t, max(end, s.t), False, _mode(s)))
    return sorted(found, key=lambda x: x.start)


def _mode(enter: Event) -> str:
    return enter.mode or "exclusive"


def conflict(a: Tenure, b: Tenure) -> bool:
    """Two tenures that must not overlap: at least one exclusive (permits: see :func:`excess`)."""
    return "exclusive" in (a.mode, b.mode)


def overlaps(found: Sequence[Tenure]) -> list[tuple[Tenure, Tenure]]:
    """Pairs (earlier, later) of conflicting tenures of different clients that intersect."""
    ordered = sorted(found, key=lambda x: x.start)
    starts = [x.start for x in ordered]
    pairs: list[tuple[Tenure, Tenure]] = []
    for i, a in enumerate(ordered):
        stop = bisect.bisect_left(starts, a.end, lo=i + 1)
        pairs.extend(
            (a, b) for b in ordered[i + 1 : stop] if b.client != a.client and conflict(a, b)
        )
    return pairs


def voided(a: Tenure, faults: Sequence[Fault]) -> bool:
    """A tenure a lock cannot end in time: its process was SIGSTOPped during it, or the server
    lost its data during it (see the module docstring)."""
    for f in faults:
        within = f.t <= a.end and (f.t_end or a.end) >= a.start
        if not within:
            continue
        if f.kind in PAUSE_FAULTS and f.victim == a.client:
            return True
        if f.kind in DATA_LOSS_FAULTS:
            return True
    return False


def explained(pair: tuple[Tenure, Tenure], faults: Sequence[Fault]) -> bool:
    """An overlap a lock cannot prevent: the earlier tenure was voided."""
    return voided(pair[0], faults)


@dataclass(frozen=True, slots=True)
class Excess:
    """A maximal interval with more than ``limit`` live tenures (``count``: the most at once)."""

    start: int
    end: int
    count: int
    clients: tuple[str, ...]  # the tenures live at the moment of ``count``


def excess(found: Sequence[Tenure], limit: int) -> list[Excess]:
    """The episodes in which more than ``limit`` tenures were live at once.

    A tenure is live on ``[start, end)``: one that ends exactly when another starts does not
    count with it (as for :func:`overlaps`).
    """
    # At one instant, ends before starts (-1 sorts before +1).
    edges = sorted(
        [(x.start, 1, i) for i, x in enumerate(found)]
        + [(x.end, -1, i) for i, x in enumerate(found)]
    )
    live: set[int] = set()
    episodes: list[Excess] = []
    start, most = 0, 0
    clients: tuple[str, ...] = ()
    for t, step, i in edges:
        was = len(live)
        if step > 0:
            live.add(i)
        else:
            live.discard(i)
        if len(live) > limit and len(live) > most:
            if was <= limit:
                start = t
            most = len(live)
            clients = tuple(sorted(found[j].client for j in live))
        elif was > limit >= len(live):
            episodes.append(Excess(start, t, most, clients))
            most = 0
    return episodes


def unexplained_excess(
    found: Sequence[Tenure], limit: int, faults: Sequence[Fault]
) -> list[Excess]:
    """The excess that remains once the voided tenures are left out."""
    return excess([x for x in found if not voided(x, faults)], limit)


def pool_excess(ops: Iterable[StoreOp], limit: int) -> list[StoreOp]:
    """The pool's operations after which it counted more than ``limit`` occupants."""
    return [op for op in sorted(ops, key=lambda o: o.t) if op.size > limit]


def explained_late_loss(pair: tuple[Event, Event], faults: Sequence[Fault], since: int) -> bool:
    """A ``lost`` after the next grant that no lock can avoid: the holder was SIGSTOPped (it
    cannot run its alarm), or the server lost its data (``since``: the lost tenure's grant)."""
    lost, _ = pair
    for f in faults:
        if f.kind in PAUSE_FAULTS and f.victim == lost.client and f.token == lost.token:
            return True
        if f.kind in DATA_LOSS_FAULTS and since <= f.t <= lost.t:
            return True
    return False


def stale_writes(ops: Iterable[StoreOp]) -> list[StoreOp]:
    """Accepted writes whose token is below the highest token accepted before them."""
    highest = 0
    stale: list[StoreOp] = []
    for op in sorted(ops, key=lambda o: o.t):
        if not op.ok:
            continue
        if op.op == "write" and op.token < highest:
            stale.append(op)
        highest = max(highest, op.token)
    return stale


def stale_reads(ops: Iterable[StoreOp]) -> list[StoreOp]:
    """Accepted shared reads whose token is below the highest exclusive token accepted before."""
    exclusive = 0
    stale: list[StoreOp] = []
    for op in sorted(ops, key=lambda o: o.t):
        if not op.ok:
            continue
        if op.op == "shared-read":
            if op.token < exclusive:
                stale.append(op)
        else:
            exclusive = max(exclusive, op.token)
    return stale


def lost_updates(ops: Iterable[StoreOp], final: Iterable[int]) -> set[int]:
    """Elements of accepted (acknowledged) writes that are not in the final set."""
    acknowledged = {
        op.element for op in ops if op.op == "write" and op.ok and op.element is not None
    }
    return acknowledged - set(final)


def expired_session_grants(events: Iterable[Event]) -> list[Event]:
    """Grants recorded after the same client's same session was reported lost."""
    lost_at: dict[tuple[str, int], int] = {}
    evs = sorted(events, key=lambda e: e.t)
    for e in evs:
        if e.kind == "session-lost":
            lost_at.setdefault((e.client, e.session), e.t)
    return [
        e for e in evs if e.kind == "enter" and lost_at.get((e.client, e.session), e.t + 1) < e.t
    ]


def late_losses(events: Sequence[Event]) -> list[tuple[Event, Event]]:
    """(lost, grant): a tenure's ``lost`` fired after the next conflicting grant (the smallest
    newer token; for a reader's tenure, the smallest newer writer's)."""
    grants = sorted((e for e in events if e.kind == "enter"), key=lambda e: e.token)
    writers = [g for g in grants if _mode(g) == "exclusive"]
    every = (grants, [g.token for g in grants])
    writers_only = (writers, [g.token for g in writers])
    mode = {(g.client, g.token): _mode(g) for g in grants}
    found: list[tuple[Event, Event]] = []
    for lost in events:
        if lost.kind != "lost" or lost.token == 0:
            continue
        shared = mode.get((lost.client, lost.token)) == "shared"
        after, tokens = writers_only if shared else every
        # The next conflicting holder: the smallest newer token among them.
        i = bisect.bisect_right(tokens, lost.token)
        if i < len(after) and after[i].t < lost.t:
            found.append((lost, after[i]))
    return sorted(found, key=lambda pair: pair[0].t)


def late_permit_losses(
    events: Sequence[Event], limit: int, deaths: Mapping[str, int] | None = None
) -> list[tuple[Event, Event]]:
    """(lost, grant): a permit's ``lost`` fired after a grant made while ``limit`` or more
    permits, this one among them, were held in their holders' view (see the module docstring)."""
    views = held_in_view(events, deaths)
    lost_at = _first_lost(events)
    grants = sorted((e for e in events if e.kind == "enter"), key=lambda e: e.t)
    times = [g.t for g in grants]
    late: list[tuple[Event, Event]] = []
    for x, stop in views:
        lost = lost_at.get((x.client, x.token))
        if lost is None:
            continue
        # Candidate grants: while x was held in its holder's view (so before its lost).
        near = [(y, end) for y, end in views if y.start < stop and end > x.start]
        for g in grants[bisect.bisect_right(times, x.start) : bisect.bisect_left(times, stop)]:
            held = sum(1 for y, end in near if y.start < g.t < end)
            if held >= limit:
                late.append((lost, g))
                break
    return sorted(late, key=lambda pair: pair[0].t)


def _first_lost(events: Iterable[Event]) -> dict[tuple[str, int], Event]:
    lost_at: dict[tuple[str, int], Event] = {}
    for e in sorted(events, key=lambda e: e.t):
        if e.kind == "lost" and e.token:
            lost_at.setdefault((e.client, e.token), e)
    return lost_at


def held_in_view(
    events: Sequence[Event], deaths: Mapping[str, int] | None = None
) -> list[tuple[Tenure, int]]:
    """Each tenure with the end of its holder's view: its exit, death or ``lost``, the first."""
    lost_at = _first_lost(events)
    views: list[tuple[Tenure, int]] = []
    for x in tenures(events, deaths):
        lost = lost_at.get((x.client, x.token))
        views.append((x, x.end if lost is None else max(x.start, min(x.end, lost.t))))
    return views


def duplicate_tokens(events: Iterable[Event]) -> list[Event]:
    """Grants of a token already granted (tokens are strictly increasing per name)."""
    seen: set[int] = set()
    dup: list[Event] = []
    for e in sorted(events, key=lambda e: e.t):
        if e.kind != "enter":
            continue
        if e.token in seen:
            dup.append(e)
        seen.add(e.token)
    return dup


@dataclass(frozen=True, slots=True)
class FaultMeasure:
    fault: Fault
    lost_after: float | None  # seconds from the fault to the victim's ``lost`` (tenure or session)
    takeover_after: float | None  # seconds from the fault to the next grant of a newer token
    lost_before_takeover: bool | None  # None when either is missing


def measure(
    fault: Fault,
    events: Sequence[Event],
    *,
    limit: int = 0,
    deaths: Mapping[str, int] | None = None,
) -> FaultMeasure:
    """Lost-detection and takeover times of one injection.

    The takeover is the first grant after the fault that conflicts with the victim's tenure: a
    newer token's (a reader's victim: a newer writer's); a permit's (``limit`` > 0): a newer
    token's granted while ``limit - 1`` other permits were held in their holders' view (it took
    the victim's permit).
    """
    evs = sorted(events, key=lambda e: e.t)
    modes = {(e.client, e.token): _mode(e) for e in evs if e.kind == "enter"}
    mode = modes.get((fault.victim, fault.token), "exclusive")
    views = held_in_view(evs, deaths) if limit and mode == "permit" else []

    def takes_over(e: Event) -> bool:
        if e.token <= fault.token:
            return False
        if mode == "shared":
            return _mode(e) == "exclusive"
        if mode == "permit":
            others = sum(
                1
                for x, end in views
                if x.start < e.t < end and x.client not in (fault.victim, e.client)
            )
            return others >= limit - 1
        return True

    lost_t: int | None = None
    for e in evs:
        if e.t < fault.t or e.client != fault.victim:
            continue
        # The tenure's ``lost``, or its session's (a release in flight has already let go of the
        # tenure, so only the session can report the loss); for a waiter, its session's.
        tenure_lost = e.kind == "lost" and fault.token and e.token == fault.token
        # (A waiter whose session a stall had already ended is measured by its next one.)
        waiter = fault.kind == "cut-off-waiter" and e.session > fault.session
        session_lost = e.kind == "session-lost" and (e.session == fault.session or waiter)
        if tenure_lost or session_lost:
            lost_t = e.t
            break
    take_t: int | None = None
    for e in evs:
        if e.t < fault.t or e.kind != "enter" or fault.kind == "cut-off-waiter":
            continue
        # A waiter's fault (no token): the victim's own next grant; else a conflicting grant.
        if (e.client == fault.victim) if fault.token == 0 else takes_over(e):
            take_t = e.t
            break
    # Only a holder's loss races the next holder's grant (a waiter's "takeover" is its own grant).
    holder = fault.token != 0
    before = None if lost_t is None or take_t is None or not holder else lost_t < take_t
    return FaultMeasure(
        fault,
        None if lost_t is None else (lost_t - fault.t) / 1e9,
        None if take_t is None else (take_t - fault.t) / 1e9,
        before,
    )


@dataclass
class Report:
    acquisitions: int
    overlaps: int
    unexplained_overlaps: int
    open_tenures: int
    stale_fenced: int
    stale_unfenced: int
    lost_updates_fenced: int
    lost_updates_unfenced: int
    rejected_fenced: int  # fenced operations refused (the fence at work)
    expired_session_grants: int
    late_losses: int
    unexplained_late_losses: int
    measures: list[FaultMeasure] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)
    # rwlock: accepted reads older than an accepted writer's operation
    stale_reads_fenced: int = 0
    stale_reads_unfenced: int = 0
    # semaphore (limit > 0): episodes over the limit; the most live at once; the pool's view
    limit: int = 0
    excess: int = 0
    unexplained_excess: int = 0
    most_concurrent: int = 0  # tenures live at once, at most (any run)
    most_shared: int = 0  # readers live at once, at most (rwlock)
    pool_excess: int = 0
    duplicate_tokens: int = 0

    def safe(self) -> bool:
        """The properties that must hold under every fault, with fencing."""
        return (
            self.unexplained_overlaps == 0
            and self.stale_fenced == 0
            and self.stale_reads_fenced == 0
            and self.lost_updates_fenced == 0
            and self.expired_session_grants == 0
            and self.unexplained_late_losses == 0
            and self.unexplained_excess == 0
            and self.duplicate_tokens == 0
        )


def check(
    events: Sequence[Event],
    fenced: Sequence[StoreOp],
    fenced_final: Iterable[int],
    unfenced: Sequence[StoreOp],
    unfenced_final: Iterable[int],
    faults: Sequence[Fault] = (),
    deaths: Mapping[str, int] | None = None,
    *,
    limit: int = 0,
    pool: Sequence[StoreOp] = (),
) -> Report:
    """Every check; ``limit`` > 0: a semaphore run (permits, ``pool`` its resource's history)."""
    found = tenures(events, deaths)
    pairs = overlaps(found)
    bad = [p for p in pairs if not explained(p, faults)]
    stale_f, stale_u = stale_writes(fenced), stale_writes(unfenced)
    stale_rf, stale_ru = stale_reads(fenced), stale_reads(unfenced)
    expired = expired_session_grants(events)
    late = late_permit_losses(events, limit, deaths) if limit else late_losses(events)
    over = excess(found, limit) if limit else []
    bad_over = unexplained_excess(found, limit, faults) if limit else []
    dup = duplicate_tokens(events)
    granted_at = {(e.client, e.token): e.t for e in events if e.kind == "enter"}
    bad_late = [
        p
        for p in late
        if not explained_late_loss(p, faults, granted_at.get((p[0].client, p[0].token), 0))
    ]
    examples: dict[str, str] = {}
    if bad:
        examples["unexplained overlap"] = repr(bad[0])
    if stale_f:
        examples["stale fenced write"] = repr(stale_f[0])
    if stale_rf:
        examples["stale fenced read"] = repr(stale_rf[0])
    if bad_over:
        examples["unexplained excess"] = repr(bad_over[0])
    if dup:
        examples["duplicate token"] = repr(dup[0])
    if expired:
        examples["expired-session grant"] = repr(expired[0])
    if bad_late:
        examples["unexplained late loss"] = repr(bad_late[0])
    return Report(
        acquisitions=sum(1 for e in events if e.kind == "enter"),
        overlaps=len(pairs),
        unexplained_overlaps=len(bad),
        open_tenures=sum(1 for x in found if not x.closed),
        stale_fenced=len(stale_f),
        stale_unfenced=len(stale_u),
        lost_updates_fenced=len(lost_updates(fenced, fenced_final)),
        lost_updates_unfenced=len(lost_updates(unfenced, unfenced_final)),
        rejected_fenced=sum(1 for op in fenced if not op.ok),
        expired_session_grants=len(expired),
        late_losses=len(late),
        unexplained_late_losses=len(bad_late),
        measures=[measure(f, events, limit=limit, deaths=deaths) for f in faults],
        examples=examples,
        stale_reads_fenced=len(stale_rf),
        stale_reads_unfenced=len(stale_ru),
        limit=limit,
        excess=len(over),
        unexplained_excess=len(bad_over),
        most_concurrent=max((e.count for e in excess(found, 0)), default=0),
        most_shared=max(
            (e.count for e in excess([x for x in found if x.mode == "shared"], 0)), default=0
        ),
        pool_excess=len(pool_excess(pool, limit)) if limit else 0,
        duplicate_tokens=len(dup),
    )


def summarize(values: Sequence[float | None]) -> str:
    """``median / max`` in ms of the present values, or ``-``."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    return f"{statistics.median(present) * 1000:.0f} / {max(present) * 1000:.0f}"
