"""``tenure status``: who holds a lock (or leads an election) and who waits; or the backend."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import io
import json
import time
from typing import Any

import tenure

from ._common import (
    EX_USAGE,
    Changes,
    CLIError,
    Screen,
    connect,
    format_seconds,
    held_for,
    shown_url,
)

__all__ = ["cmd_status"]


_KINDS = ("lock", "rwlock", "semaphore", "election")


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args.url, args.namespace) as client:
        if args.name is None:
            if args.watch:
                raise CLIError("--watch follows one name: tenure status NAME --watch", EX_USAGE)
            return _backend(client, as_json=args.json)
        if args.watch:
            return _watch(client, args)
        print(_render(args, _fetch(client, args), dt.datetime.now(dt.UTC)), end="")
        return 0


_Found = list[tuple[str, list[tenure.Holder]]]


def _kind(args: argparse.Namespace) -> str | None:
    return "election" if args.election else args.kind


def _fetch(client: tenure.Client, args: argparse.Namespace) -> _Found:
    kind = _kind(args)
    if kind is not None:
        return [(kind, client.contenders(args.name, kind=kind))]
    # Every key space where the name is in use; a free name shows as a free lock.
    found = [(k, c) for k in _KINDS if (c := client.contenders(args.name, kind=k))]
    return found or [("lock", [])]


def _render(args: argparse.Namespace, found: _Found, now: dt.datetime, aged: float = 0.0) -> str:
    """The report of ``found`` as text (``aged``: seconds since it was read, taken off the
    expiry times)."""
    if aged:
        found = [(k, [h if h.expires_in is None else _aged(h, aged) for h in c]) for k, c in found]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if args.json:
            reports = [_report(args.name, k, contenders, now) for k, contenders in found]
            print(
                json.dumps(
                    reports[0] if len(reports) == 1 else reports, indent=None if args.watch else 2
                )
            )
        else:
            for k, contenders in found:
                holders, waiters = _split(contenders)
                _table(args.name, k, holders, waiters, now)
    return out.getvalue()


def _aged(holder: tenure.Holder, aged: float) -> tenure.Holder:
    return dataclasses.replace(holder, expires_in=max(0.0, (holder.expires_in or 0.0) - aged))


#: Backends that publish changes of elections (and PostgreSQL of semaphores) only: for the
#: other kinds ``status --watch`` also looks again every this many seconds.
_LOOK_AGAIN = 2.0
_UNPUBLISHED = ("redis", "rediss", "redlock", "postgres")


def _watch(client: tenure.Client, args: argparse.Namespace) -> int:
    kinds = [_kind(args)] if _kind(args) is not None else list(_KINDS)
    changes = Changes(
        [functools.partial(client.changes, args.name, kind=k) for k in kinds if k is not None]
    )
    screen = Screen()
    look_again = _LOOK_AGAIN if client.url.startswith(_UNPUBLISHED) else None
    changes.wait(None)  # watching
    shown = None
    while True:
        found = _fetch(client, args)
        fetched, now = time.monotonic(), dt.datetime.now(dt.UTC)
        if screen.tty and not args.json:  # redrawn in place; relative times move on
            while True:
                aged = time.monotonic() - fetched
                screen.show(
                    f"tenure status {args.name} (every change; Ctrl-C to stop)\n\n"
                    + _render(args, found, now + dt.timedelta(seconds=aged), aged)
                )
                if changes.wait(1.0) or (look_again is not None and aged >= look_again):
                    break
            continue
        # Piped (or --json): a new report only when something other than the clock changed.
        text = json.dumps(
            [(k, [dataclasses.replace(h, expires_in=None) for h in c]) for k, c in found],
            default=str,
        )
        if text != shown:
            if shown is not None and not args.json:
                screen.show("")
            screen.show(_render(args, found, now))
            shown = text
        changes.wait(look_again)


def _split(contenders: list[tenure.Holder]) -> tuple[list[tenure.Holder], list[tenure.Holder]]:
    # (Another client's holder may have no grant time: ``waiting`` alone says who holds.)
    holders = [h for h in contenders if not h.waiting]
    return holders, [h for h in contenders if h.waiting]


def _report(
    name: str, kind: str, contenders: list[tenure.Holder], now: dt.datetime
) -> dict[str, Any]:
    holders, waiters = _split(contenders)
    return {
        "name": name,
        "kind": kind,
        "holder": _record(holders[0], now) if holders else None,
        "holders": [_record(h, now) for h in holders],
        "waiters": [_record(w, now) for w in waiters],
    }


def _record(holder: tenure.Holder, now: dt.datetime) -> dict[str, Any]:
    record = dataclasses.asdict(holder)
    record["acquired_at"] = None if holder.acquired_at is None else holder.acquired_at.isoformat()
    record["held_for"] = held_for(holder, now)
    return record


def _table(
    name: str,
    kind: str,
    holders: list[tenure.Holder],
    waiters: list[tenure.Holder],
    now: dt.datetime,
) -> None:
    if not holders and not waiters:
        print(f"{kind} {name}: free")
        return
    state = f"held by {len(holders)}" if len(holders) > 1 else "held" if holders else "free"
    if kind == "election":
        state = "has a leader" if holders else "has no leader"
    print(f"{kind} {name}: {state}" + (f", {len(waiters)} waiting" if waiters else ""))
    rows: list[tuple[str, ...]] = []
    role = "leader" if kind == "election" else "holder"
    entries = [(role, h) for h in holders] + [("waiter", w) for w in waiters]
    show_value = any(h.value is not None for _, h in entries)
    show_mode = kind in ("rwlock", "semaphore")
    header: tuple[str, ...] = ("ROLE",) + (("MODE",) if show_mode else ())
    header += ("OWNER", "HOST", "PID", "TOKEN", "HELD FOR", "EXPIRES IN")
    if show_value:
        header += ("VALUE",)
    for role_name, h in entries:
        # An ended holder (released before its min_hold) keeps the name until its hold ends.
        shown = f"{role_name} (ended)" if h.ended else role_name
        row: tuple[str, ...] = (shown,) + ((h.mode,) if show_mode else ())
        row += (
            _owner(h.owner),
            h.host,
            str(h.pid) if h.pid else "-",  # (another client's entry: no pid known)
            str(h.token) if not h.waiting else "-",
            format_seconds(held_for(h, now)),
            format_seconds(h.expires_in),
        )
        if show_value:
            row += (h.value if h.value is not None else "-",)
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip())


def _owner(owner: str) -> str:
    """tenure's 128-bit owner ids shortened; another client's label (``go``,
    ``kazoo:<identifier>``, ``curator``, ``unknown``) in full."""
    if len(owner) == 32 and all(c in "0123456789abcdef" for c in owner):
        return owner[:8]
    return owner


def _backend(client: tenure.Client, *, as_json: bool) -> int:
    caps = client.capabilities
    if as_json:
        print(
            json.dumps(
                {
                    "url": shown_url(client),
                    "namespace": client.namespace,
                    "default_ttl": client.ttl,
                    "capabilities": dataclasses.asdict(caps),
                },
                indent=2,
            )
        )
        return 0
    print(f"url:          {shown_url(client)}")
    print(f"namespace:    {client.namespace}")
    print(f"default ttl:  {client.ttl:g} s")
    leases = (
        "yes (a holder that stops renewing is replaced after ttl"
        + (f" + {caps.expiry_slack:g} s" if caps.expiry_slack else "")
        + ")"
        if caps.leases
        else "no (the kernel frees a dead process's locks at once)"
    )
    print(f"leases:       {leases}")
    if caps.leases:
        print(f"minimum ttl:  {caps.min_ttl:g} s")
    print(f"fifo grants:  {'yes' if caps.fifo else 'no'}")
    print(f"wake-up:      {caps.wakeup}")
    return 0
