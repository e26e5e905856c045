"""``tenure ls``: every name of the namespace that has holders or waiters, once or as it changes."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import time
from typing import Any

import tenure

from ._common import (
    Changes,
    Screen,
    connect,
    format_seconds,
    format_table,
    held_for,
    use_colour,
)

__all__ = ["cmd_ls", "describe_listing", "render_listing"]

#: How often a terminal is redrawn (relative times move on) while nothing changes; the backend
#: is asked again only when it reports a change (or, without a watch, at its own interval).
_REDRAW = 1.0
#: At most this many listings a second while names change all the time.
_MIN_GAP = 0.2

_Listing = dict[str, list[tenure.Holder]]


def cmd_ls(args: argparse.Namespace) -> int:
    with connect(args.url, args.namespace) as client:
        if not args.watch:
            listing = client.in_use()
            now = dt.datetime.now(dt.UTC)
            if args.json:  # (indented only when short: the indenting encoder is slow)
                indent = 2 if len(listing) <= 100 else None
                print(json.dumps(describe_listing(listing, now), indent=indent))
            else:
                print(render_listing(listing, now, colour=use_colour()), end="")
            return 0
        return _watch(client, as_json=args.json)


def _watch(client: tenure.Client, *, as_json: bool) -> int:
    changes = Changes([client.changes])
    screen = Screen()
    changes.wait(None)  # watching (or the first look of a backend without a watch)
    shown = None
    while True:
        listing = client.in_use()
        fetched, now = time.monotonic(), dt.datetime.now(dt.UTC)
        if as_json:  # one compact document per change (JSON lines)
            text = json.dumps(describe_listing(listing, now, times=False))
            if text != shown:
                screen.show(json.dumps(describe_listing(listing, now)))
                shown = text
        elif screen.tty:  # redrawn in place; relative times move on between looks
            while True:
                aged = time.monotonic() - fetched
                now_then = now + dt.timedelta(seconds=aged)
                screen.show(
                    f"tenure ls {client.url} namespace {client.namespace} "
                    f"(every change; Ctrl-C to stop)\n\n"
                    + render_listing(listing, now_then, colour=use_colour(), aged=aged)
                )
                if changes.wait(_REDRAW):
                    break
            time.sleep(_MIN_GAP)  # (a burst of changes: one look for all of it)
            continue
        else:  # piped: a new listing only when it changed
            text = render_listing(listing, now, colour=False, times=False)
            if text != shown:
                if shown is not None:
                    screen.show("")
                screen.show(render_listing(listing, now, colour=False))
                shown = text
        changes.wait(None)
        time.sleep(_MIN_GAP)


def _kind_name(key: str) -> tuple[str, str]:
    kind, _, name = key.partition("/")
    return kind, name


def _mode(contenders: list[tenure.Holder]) -> str:
    return contenders[0].mode if contenders else "exclusive"


def _oldest_wait(waiters: list[tenure.Holder], now: dt.datetime) -> float | None:
    since = [w.waiting_since for w in waiters if w.waiting_since is not None]
    return max(0.0, (now - min(since)).total_seconds()) if since else None


def describe_listing(listing: _Listing, now: dt.datetime, *, times: bool = True) -> list[Any]:
    """The ``--json`` form: one object per name (``times=False``: without the relative times,
    to tell whether anything but the clock changed)."""
    out = []
    for key, contenders in listing.items():
        kind, name = _kind_name(key)
        holders = [h for h in contenders if not h.waiting]
        waiters = [h for h in contenders if h.waiting]
        entry: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "mode": _mode(holders or waiters),
            "holders": [_record(h, now, times) for h in holders],
            "waiters": len(waiters),
            "oldest_wait": _oldest_wait(waiters, now) if times else None,
            "waiting": [_record(w, now, times) for w in waiters],
        }
        out.append(entry)
    return out


_FIELDS = tuple(field.name for field in dataclasses.fields(tenure.Holder))


def _record(holder: tenure.Holder, now: dt.datetime, times: bool) -> dict[str, Any]:
    record = {name: getattr(holder, name) for name in _FIELDS}  # (asdict deep-copies: slow)
    for field in ("acquired_at", "waiting_since"):
        value = record[field]
        record[field] = None if value is None else value.isoformat()
    record["held_for"] = held_for(holder, now) if times else None
    if not times:
        record["expires_in"] = None
    return record


def render_listing(
    listing: _Listing, now: dt.datetime, *, colour: bool, times: bool = True, aged: float = 0.0
) -> str:
    """The table: one row per holder (a name with only waiters: one row), relative times
    (``aged``: seconds since the backend was asked, taken off ``expires in``)."""
    if not listing:
        return "no name in this namespace has holders or waiters\n"
    header: tuple[str, ...] = ("NAME", "KIND", "MODE", "OWNER", "HOST", "PID", "TOKEN")
    header += ("HELD FOR", "EXPIRES IN", "WAITERS", "OLDEST WAIT")
    rows: list[tuple[str, ...]] = []

    def seconds(value: float | None) -> str:
        return format_seconds(value) if times else ""

    for key, contenders in listing.items():
        kind, name = _kind_name(key)
        holders = [h for h in contenders if not h.waiting]
        waiters = [h for h in contenders if h.waiting]
        waiting = (str(len(waiters)), seconds(_oldest_wait(waiters, now)) if waiters else "-")
        if not holders:
            rows.append((name, kind, _mode(waiters), "-", "-", "-", "-", "-", "-", *waiting))
        for h in holders:
            expires = None if h.expires_in is None else max(0.0, h.expires_in - aged)
            rows.append(
                (
                    name,
                    kind,
                    # (released before its min_hold ran out: kept until then, nobody else in)
                    h.mode + (" (ended)" if h.ended else ""),
                    _owner(h.owner),
                    h.host or "-",
                    str(h.pid) if h.pid else "-",
                    str(h.token),
                    seconds(held_for(h, now)),
                    seconds(expires),
                    *waiting,
                )
            )
    return format_table(header, rows, bold=colour)


def _owner(owner: str) -> str:
    """tenure's 128-bit owner ids shortened; another client's label in full."""
    if len(owner) == 32 and all(c in "0123456789abcdef" for c in owner):
        return owner[:8]
    return owner
