"""The history checker: pure functions over what the workers, the store and the nemesis recorded.

Inputs (all times are ``time.monotonic_ns()``, one clock for every process of the machine):

* worker :class:`Event` s, kinds: ``start`` (detail: pid), ``acquiring``, ``enter`` (token,
  session; detail ``lost`` if the lock was already flagged lost when ``acquire`` returned),
  ``exit`` (token; recorded before ``release``), ``released``, ``lost`` (the lock's ``on_lost``,
  token of the tenure), ``session-lost`` (session), ``error`` (detail), ``stop``;
* the stores' :class:`~tests.faults.resource.StoreOp` histories and final sets;
* the nemesis's :class:`Fault` s and the kill times of the clients it SIGKILLed.

Checks:

* **overlaps**: two tenures (enter..exit of one client's grant) of different clients intersect.
  A killed client's tenure ends at its kill; one never closed runs to the end of the history.
  An overlap is *explained* when the earlier tenure's process was SIGSTOPped by the nemesis, or
  the server lost its data (killed and restarted) during that tenure: no lock can stop a paused
  process, and a server that forgets its keys voids the lease; there, only fencing protects the
  resource. Unexplained overlaps are lock bugs.
* **stale writes accepted**: a write the store accepted although it had already accepted an
  operation with a higher token (in the store's own order). Fenced store: must be 0.
* **lost updates**: elements of accepted writes missing from the final set.
* **expired-session grants**: a grant (``enter``) recorded after the client's session had been
  reported lost (``session-lost`` of the same session, earlier).
* **late losses**: a tenure's ``lost`` fired after another tenure of the name was granted (§2.4
  says it must fire before).
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
    "expired_session_grants",
    "late_losses",
    "lost_updates",
    "measure",
    "overlaps",
    "stale_writes",
    "summarize",
    "tenures",
]

#: Faults that void the lease without the holder being able to notice in time (see module doc).
PAUSE_FAULTS = frozenset({"pause-holder"})
DATA_LOSS_FAULTS = frozenset({"kill-server"})


@dataclass(frozen=True, slots=True)
class Event:
    t: int
    client: str
    kind: str
    token: int = 0
    session: int = 0
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "t": self.t,
                "client": self.client,
                "kind": self.kind,
                "token": self.token,
                "session": self.session,
                "detail": self.detail,
            }
        )

    @classmethod
    def from_json(cls, line: str) -> Event:
        d = json.loads(line)
        return cls(d["t"], d["client"], d["kind"], d["token"], d["session"], d["detail"])


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
            found.append(Tenure(e.client, e.token, s.session, s.t, e.t, closed=True))
    for (client, token), s in open_.items():
        end = deaths.get(client, horizon)
        found.append(Tenure(client, token, s.session, s.t, max(end, s.t), closed=False))
    return sorted(found, key=lambda x: x.start)


def overlaps(found: Sequence[Tenure]) -> list[tuple[Tenure, Tenure]]:
    """Pairs (earlier, later) of tenures of different clients that intersect."""
    ordered = sorted(found, key=lambda x: x.start)
    starts = [x.start for x in ordered]
    pairs: list[tuple[Tenure, Tenure]] = []
    for i, a in enumerate(ordered):
        stop = bisect.bisect_left(starts, a.end, lo=i + 1)
        pairs.extend((a, b) for b in ordered[i + 1 : stop] if b.client != a.client)
    return pairs


def explained(pair: tuple[Tenure, Tenure], faults: Sequence[Fault]) -> bool:
    """An overlap a lock cannot prevent: see the module docstring."""
    a, _ = pair
    for f in faults:
        within = f.t <= a.end and (f.t_end or a.end) >= a.start
        if not within:
            continue
        if f.kind in PAUSE_FAULTS and f.victim == a.client:
            return True
        if f.kind in DATA_LOSS_FAULTS:
            return True
    return False


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
    """(lost, grant): a tenure's ``lost`` fired after the next token had been granted."""
    grants = sorted((e for e in events if e.kind == "enter"), key=lambda e: e.token)
    tokens = [g.token for g in grants]
    found: list[tuple[Event, Event]] = []
    for lost in events:
        if lost.kind != "lost" or lost.token == 0:
            continue
        i = bisect.bisect_right(tokens, lost.token)  # the next holder: the smallest newer token
        if i < len(grants) and grants[i].t < lost.t:
            found.append((lost, grants[i]))
    return sorted(found, key=lambda pair: pair[0].t)


@dataclass(frozen=True, slots=True)
class FaultMeasure:
    fault: Fault
    lost_after: float | None  # seconds from the fault to the victim's ``lost`` (tenure or session)
    takeover_after: float | None  # seconds from the fault to the next grant of a newer token
    lost_before_takeover: bool | None  # None when either is missing


def measure(fault: Fault, events: Iterable[Event]) -> FaultMeasure:
    """Lost-detection and takeover times of one injection."""
    evs = sorted(events, key=lambda e: e.t)
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
        # A waiter's fault (no token): the victim's own next grant; else a newer token's grant.
        if (e.client == fault.victim) if fault.token == 0 else (e.token > fault.token):
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

    def safe(self) -> bool:
        """The properties that must hold under every fault, with fencing."""
        return (
            self.unexplained_overlaps == 0
            and self.stale_fenced == 0
            and self.lost_updates_fenced == 0
            and self.expired_session_grants == 0
            and self.unexplained_late_losses == 0
        )


def check(
    events: Sequence[Event],
    fenced: Sequence[StoreOp],
    fenced_final: Iterable[int],
    unfenced: Sequence[StoreOp],
    unfenced_final: Iterable[int],
    faults: Sequence[Fault] = (),
    deaths: Mapping[str, int] | None = None,
) -> Report:
    found = tenures(events, deaths)
    pairs = overlaps(found)
    bad = [p for p in pairs if not explained(p, faults)]
    stale_f, stale_u = stale_writes(fenced), stale_writes(unfenced)
    expired = expired_session_grants(events)
    late = late_losses(events)
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
        measures=[measure(f, events) for f in faults],
        examples=examples,
    )


def summarize(values: Sequence[float | None]) -> str:
    """``median / max`` in ms of the present values, or ``-``."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    return f"{statistics.median(present) * 1000:.0f} / {max(present) * 1000:.0f}"
