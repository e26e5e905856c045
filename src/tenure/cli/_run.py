"""``tenure run`` (CMD under a lock) and ``tenure elect`` (CMD while leader)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import tenure

from ._common import (
    EX_LOST,
    EX_TEMPFAIL,
    child_environment,
    connect,
    describe_holder,
    interrupting_signals,
    print_err,
    stderr_is_tty,
    wait_in_thread,
)
from ._supervise import supervise

__all__ = ["cmd_elect", "cmd_run"]

#: How often the progress line asks the backend who holds the lock (display only).
_HOLDER_REFRESH = 5.0


def _holder_cache(lookup: Callable[[], tenure.Holder | None]) -> Callable[[], tenure.Holder | None]:
    """``lookup()``, asked at most every few seconds; backend errors show as 'unknown'."""
    cache: dict[str, object] = {"at": None, "holder": None}

    def get() -> tenure.Holder | None:
        at = cache["at"]
        now = time.monotonic()
        if not isinstance(at, float) or now - at >= _HOLDER_REFRESH:
            cache["at"] = now
            try:
                cache["holder"] = lookup()
            except tenure.TenureError:
                cache["holder"] = None
        holder = cache["holder"]
        return holder if isinstance(holder, tenure.Holder) else None

    return get


def _describe(holder: tenure.Holder | None, *, token_word: str = "token") -> str:
    """``describe_holder``, but another client's entry (no pid: etcdctl, a Go program, kazoo,
    Curator) by what is known of it, never "pid 0 on ''"."""
    if holder is None or holder.pid:
        return describe_holder(holder, token_word=token_word)
    where = f" on {holder.host}" if holder.host else ""
    return f"{holder.owner or 'another client'}{where} ({token_word} {holder.token})"


def _lock_for(client: tenure.Client, args: argparse.Namespace) -> tuple[tenure.Lock, str, str]:
    """The lock object ``run`` takes (plain, an rwlock side or a permit), what to call it, and
    its key space."""
    name: str = args.name
    min_hold: float | None = args.min_hold
    if args.read or args.write:
        rw = client.rwlock(name, ttl=args.ttl, min_hold=min_hold)
        side = "read" if args.read else "write"
        return (rw.read if args.read else rw.write), f"rwlock {name} ({side})", "rwlock"
    if args.limit is not None:
        sem = client.semaphore(name, limit=args.limit, ttl=args.ttl, min_hold=min_hold)
        return sem, f"semaphore {name} (limit {args.limit})", "semaphore"
    return client.lock(name, ttl=args.ttl, min_hold=min_hold), f"lock {name}", "lock"


def cmd_run(args: argparse.Namespace) -> int:
    with connect(args.url, args.namespace) as client:
        name: str = args.name
        lock, what, kind = _lock_for(client, args)
        with interrupting_signals():
            if args.no_wait:
                got = lock.acquire(blocking=False)
            else:
                holder = _holder_cache(lambda: client.holder(name, kind=kind))

                def describe(elapsed: float) -> str:
                    who = holder()
                    held_by = f" held by {_describe(who)}" if who is not None else ""
                    return f"waiting for {what}{held_by} … {elapsed:.1f} s"

                timeout: float | None = args.timeout
                got = wait_in_thread(
                    lambda: lock.acquire(timeout=timeout),
                    describe=describe if stderr_is_tty() else None,
                )
        if not got:
            if args.no_wait and args.min_hold and not args.verbose:
                # The cron case: every replica but one finds the job taken (or just run). That
                # is the expected outcome, so no output (cron mails any); the exit code says it.
                return EX_TEMPFAIL
            try:
                who = client.holder(name, kind=kind)
            except tenure.TenureError:
                who = None
            held_by = f"held by {_describe(who)}" if who is not None else "held by another"
            if who is not None and who.ended:
                kept = f" for {who.expires_in:.1f} s more" if who.expires_in is not None else ""
                held_by = f"kept{kept} after {_describe(who)} ran (--min-hold)"
            if args.no_wait:
                print_err(f"tenure: {what} is {held_by}; not running CMD (--no-wait)")
            else:
                print_err(
                    f"tenure: timed out after {args.timeout:g} s waiting for {what}, "
                    f"{held_by}; not running CMD"
                )
            return EX_TEMPFAIL

        env = child_environment(TENURE_LOCK=name, TENURE_TOKEN=str(lock.token))

        def lost_message() -> str:
            try:
                lock.ensure_held()
            except tenure.LockLostError as exc:
                return str(exc)
            except tenure.TenureError:
                pass
            return f"{what} was lost"

        try:
            outcome = supervise(
                args.cmd,
                env,
                grace=args.grace,
                on_lost=lambda callback: lock.on_lost(lambda _lock: callback()),
                lost_message=lost_message,
            )
        finally:
            _release(lock)
        if outcome.lost:
            print_err(f"tenure: CMD stopped because {what} was lost (exit {EX_LOST})")
            return EX_LOST
        return outcome.code


def _release(lock: tenure.Lock) -> None:
    try:
        lock.release()
    except tenure.LockLostError:
        pass  # already reported, or the child finished first: its exit code stands
    except tenure.NotHeldError:
        pass
    except tenure.BackendError as exc:
        print_err(f"tenure: warning: releasing lock {lock.name!r}: {exc}")


def cmd_elect(args: argparse.Namespace) -> int:
    with connect(args.url, args.namespace) as client:
        name: str = args.name
        election = client.election(name, value=args.value, ttl=args.ttl)
        leader = _holder_cache(election.leader)

        def describe(elapsed: float) -> str:
            who = leader()
            led_by = (
                f"; leader is {_describe(who, token_word='term')}"
                + (f" value {who.value!r}" if who is not None and who.value is not None else "")
                if who is not None
                else ""
            )
            return f"standby for election {name}{led_by} … {elapsed:.1f} s"

        while True:
            with interrupting_signals():
                if not wait_in_thread(
                    lambda: election.campaign(timeout=None),
                    describe=describe if stderr_is_tty() else None,
                ):
                    continue
            try:
                term = election.term
            except tenure.NotLeaderError:
                continue  # lost between the grant and now: campaign again
            env = child_environment(TENURE_ELECTION=name, TENURE_LEADER_TERM=str(term))

            def lost_message(term: int = term) -> str:
                return f"leadership of election {name!r} (term {term}) was lost"

            try:
                outcome = supervise(
                    args.cmd,
                    env,
                    grace=args.grace,
                    on_lost=lambda callback: election.on_lost(lambda _e: callback()),
                    lost_message=lost_message,
                )
            except BaseException:
                _resign(election)
                raise
            if not outcome.lost:
                _resign(election)
                return outcome.code
            _resign(election)
            if args.once:
                print_err(f"tenure: CMD stopped: leadership of {name!r} lost (exit {EX_LOST})")
                return EX_LOST
            print_err(f"tenure: campaigning again for election {name!r}")


def _resign(election: tenure.Election) -> None:
    try:
        election.resign()
    except tenure.NotLeaderError:
        pass
    except tenure.BackendError as exc:
        print_err(f"tenure: warning: resigning from election {election.name!r}: {exc}")
