"""The ``redlock://h1:p1,h2:p2,h3:p3`` backend: one lock over N independent Redis masters.

Every master runs the Redis driver's scripts (``_redis_lua``) on the same key layout, so every
mode (locks, elections, rwlocks, semaphores) works the same way on each; this module adds the
quorum around them. ``N`` masters, quorum ``Q = N // 2 + 1`` (for a semaphore, see below).

- **Acquire** (one attempt): the acquire script on every master **at once**: written to every
  master's connection first, then the replies read, so the masters work in parallel and the
  attempt waits about one round trip, at most ``node_timeout`` (default 0.1 s, much smaller
  than any TTL we accept) for all of them together (``_scripts``). The attempt succeeds if
  ``Q`` masters granted and the validity ``ttl - elapsed - drift`` (``drift = ttl *
  drift_factor + 2 ms``) is still positive; otherwise the partial grants are given back on
  every master (owner-checked) and the caller waits (below) and tries again.
- **Modes and quorums.** Each master enforces ``base.grantable`` on its own holders. A writer
  and a reader (or two writers) each confirmed by a majority share a master, which never holds
  both at once: exclusion holds as for a lock. A semaphore is different: two majorities
  intersect, but a master may hold ``limit`` permits, so with majorities ``limit + 1`` holders
  can each hold a different majority while no master holds more than ``limit`` (3 masters,
  limit 2: A on {1, 2}, B on {2, 3}, C on {1, 3}; plain concurrent acquires reach that). So a
  permit needs ``Q(limit) = N * limit // (limit + 1) + 1`` masters (``quorum``): ``H`` holders
  hold ``H * Q(limit)`` entries on ``N`` masters of at most ``limit`` each, so ``H <= N *
  limit / Q(limit) < limit + 1``. For ``limit`` 1 that is the majority; it grows towards ``N``
  with the limit (5 masters: 3 for limit 1, 4 for limits 2-3, 5 from limit 4), which is the
  limit of the guarantee: a semaphore survives ``N - Q(limit)`` masters down, not a minority.
- **Fencing token**: each granting master bumps its own counter to max(counter + 1, its clock
  rounded down to 10 ms, in µs; see ``_redis_lua``) and returns it; the token is the
  **maximum over the quorum**. Masters that
  returned less are raised to it (the ``RAISE`` script, owner-checked) before the grant counts;
  a master refuses when its counter already reached that value (another grant got there
  meanwhile). So a quorum holds counter >= token when the key is handed out, and no two
  contenders are confirmed with one token: two readers of different quorums that picked the
  same maximum meet on a master where one of them was bumped or raised to it first, which
  refuses the other (it gives back and tries again). Any later holder needs a quorum too,
  which shares a master with ours; there it is bumped after our counter reached our token
  (for a writer: after our entry there ended), so its token is greater: tokens are unique,
  and strictly increase across holders whose attempts do not overlap (a writer's exceeds
  every earlier grant's, a reader's every earlier writer's). Assumptions: (1) per-master
  mutual exclusion, i.e. no master loses a key while it is held (no restart without
  persistence within a TTL; a master that comes back empty, or from a snapshot older than its
  last grants, still bumps above every token it gave, by its clock, as long as the clock does
  not step back and the restart took longer than the 10 ms step plus the clock offset); (2)
  clock *rates* differ by less than ``drift_factor`` (the Redlock assumption). The common case
  (all masters in step) costs nothing extra: every bump already equals the max (the clock is
  rounded to 10 ms for that: with microseconds the masters would never agree, and every grant
  would pay the raise step's round trip).
- **Waiting**: no master sees the others' queues, so the order must be one that every master
  computes alike: a contender's **arrival**, the masters' clock in µs when it first asked (the
  client's clock plus the offset it learned from the masters' replies), sent with every
  attempt and the same number on every master (ties by owner id). A waiter queues on every
  master under its arrival; a master lets a contender take the key only if the grant rule
  allows it after every live waiter that arrived before it, each let go first in order
  (``turn`` in the acquire script). So the earliest live waiter is first on every master where
  it is queued, two masters' queues never hold each other up, and a releaser asking again at
  once queues behind the waiters instead of taking the key back (before this order, 8
  processes in a loop: fairness 0.23; one process took nearly every grant). Arrival order is
  only as good as the clocks: two arrivals closer than the offset between the clients' views
  of the masters' clock may swap (``Capabilities.fifo`` stays False). A waiter blocks in BLPOP
  on its signal list on the **first master that answered** (the same "home" master for every
  client while it is up). A release (on every master) pushes a wake-up to the waiters at the
  head of each master's queue that may now go (one writer, or the run of readers, or the next
  permit waiters), so the home master wakes them, no polling. A woken waiter still has to win
  a quorum. The BLPOP also ends when the first holder's TTL on the home master does, or after
  a random delay (up to ``retry_delay``) when nobody holds the home master. A contender that
  got some masters but not a quorum (a split: mostly the previous holder's release had not yet
  reached every master when the home master's wake-up came) gives them back and tries again
  after Redlock's random delay, here growing from 1 ms to ``retry_delay``.
- **Release**: on every master at once; counts as released if a quorum still had it.
- **Renew**: the renew script on every master at once, over all the session's entries; an
  entry confirmed by fewer than its quorum of masters is lost; fewer answers than the largest
  quorum among them is a failed renewal (retried until the session's deadline, then ``lost``).
- **Unavailable**: when fewer than ``Q`` masters answer, acquire gives back what it got and
  raises ``BackendUnavailableError`` naming the masters that did not answer.

``redlock+rediss://`` uses TLS to every master (options ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_cert_reqs``); the URL's user/password and db apply to every master.
"""

from __future__ import annotations

import asyncio  # tenure: async-only
import dataclasses
import json
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar, cast

import redis.asyncio as redis_client  # tenure: async-only
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry  # tenure: async-only
from redis.backoff import NoBackoff

# tenure: sync import os
# tenure: sync from concurrent.futures import ThreadPoolExecutor
# tenure: sync import redis as redis_client
# tenure: sync from redis.retry import Retry
from ..._names import OwnerInfo, new_owner_id
from ..._types import Capabilities, Holder
from ..._url import ParsedURL, number_option, seconds_option
from ...errors import BackendError, BackendUnavailableError, ConfigurationError
from .. import _compat
from ._redis_common import (
    SSL_OPTIONS,
    ErrorBoundary,
    OwnConnection,
    Scripts,
    database,
    entry_key,
    from_us,
    holders_from_reply,
    mode_args,
    ms,
    names_in_use,
    pack_command,
    prefix,
    ssl_settings,
)
from .base import Grant, Lease, Mode, hold_left, limit_mismatch, refreshes

__all__ = ["RedlockDriver", "quorum", "validity"]

T = TypeVar("T")

#: Longest single BLPOP on the home master (its client's socket timeout is 1 s longer).
MAX_BLOCK = 4.0

#: One master's view of a key (an ``INSPECT`` reply): holders, waiters, a semaphore's limit.
_View = tuple[list[Holder], list[Holder], int]


def quorum(n: int, limit: int = 0) -> int:
    """Masters that must agree: a strict majority; for a semaphore's permit (``limit`` >= 1),
    more than ``n * limit / (limit + 1)`` (see the module docstring)."""
    if limit <= 1:
        return n // 2 + 1
    return n * limit // (limit + 1) + 1


def validity(ttl: float, elapsed: float, drift_factor: float) -> float:
    """Seconds a fresh grant can be trusted: ``ttl - elapsed - (ttl * drift_factor + 2 ms)``."""
    return ttl - elapsed - (ttl * drift_factor + 0.002)


class _Master:
    """One Redis master: its client, the scripts registered on it, its blocking client."""

    def __init__(self, host: str, port: int, settings: dict[str, Any], user: str | None) -> None:
        self.address = f"{host}:{port}"
        self.user = user
        self.settings = settings
        self.client: Any = redis_client.Redis(host=host, port=port, **settings)
        self.scripts = Scripts(self.client)
        self._host, self._port = host, port
        self._blocking: Any = None
        self._own = OwnConnection(self.client.connection_pool)

    def blocking(self) -> Any:
        """A client for BLPOP, whose socket timeout outlasts the longest block."""
        if self._blocking is None:
            settings = dict(self.settings, socket_timeout=MAX_BLOCK + 1.0)
            self._blocking = redis_client.Redis(host=self._host, port=self._port, **settings)
        return self._blocking

    def errors(self, what: str) -> ErrorBoundary:
        return ErrorBoundary(self.address, self.user, what)

    async def connection(self) -> Any:
        """A connection for one fan-out call (see ``OwnConnection``)."""
        return await self._own.take()

    async def done_with(self, conn: Any, *, broken: bool) -> None:
        await self._own.give_back(conn, broken=broken)

    async def send(self, conn: Any, command: bytes) -> None:
        await self._own.send(conn, command)

    async def read_by(self, conn: Any, deadline: float) -> Any:
        """Read the reply due on ``conn``, waiting no later than ``deadline`` (``monotonic()``)."""
        return await self._own.read(conn, max(deadline - _compat.monotonic(), 0.0005))

    async def close(self) -> None:
        await self._own.close()
        await self.client.aclose()
        if self._blocking is not None:
            await self._blocking.aclose()


class RedlockDriver:
    """Driver for ``redlock://[user:password@]h1:p1,h2:p2,h3:p3[/db]`` and ``redlock+rediss://``."""

    scheme: ClassVar[str] = "redlock"
    capabilities: ClassVar[Capabilities] = Capabilities(
        leases=True,
        fifo=False,
        min_ttl=0.5,
        expiry_slack=0.0,
        wakeup="release pushes a wake-up to the waiters of each master that may go (BLPOP on one)",
        min_hold=True,  # each master's release script keeps the entry with PEXPIRE
    )
    options: ClassVar[frozenset[str]] = frozenset(
        {"node_timeout", "connect_timeout", "drift_factor", "retry_delay", *SSL_OPTIONS}
    )

    def __init__(self, url: ParsedURL, *, namespace: str, options: dict[str, str]) -> None:
        hosts = url.hosts_with_default(6379)
        if len(hosts) < 3:
            raise ConfigurationError(
                f"redlock:// needs at least 3 independent masters, got {len(hosts)}; "
                "use redis:// for one server"
            )
        self._url = url
        self._namespace = namespace
        self._node_timeout = seconds_option(options, "node_timeout", 0.1)
        self._drift_factor = number_option(options, "drift_factor", 0.01)
        self._retry_delay = seconds_option(options, "retry_delay", 0.2)
        settings: dict[str, Any] = dict(
            db=database(url),
            username=url.username,
            password=url.password,
            socket_timeout=self._node_timeout,
            socket_connect_timeout=seconds_option(options, "connect_timeout", self._node_timeout),
            retry=Retry(NoBackoff(), 0),  # a master that does not answer in time is a "no"
            decode_responses=True,
            **ssl_settings(options, url.scheme == "redlock+rediss", "redlock+rediss://"),
        )
        self._masters = [_Master(h, p, settings, url.username) for h, p in hosts]
        self._quorum = quorum(len(self._masters))
        self._offset_us = 0  # the masters' clock minus ours, µs (see _learn_clock)
        # tenure: sync self._pool: Any = None
        # tenure: sync self._pool_pid = 0

    def __repr__(self) -> str:
        return f"RedlockDriver({self._url.redacted()!r})"

    @property
    def masters(self) -> int:
        return len(self._masters)

    def _prefix(self, key: str) -> str:
        return prefix(self._namespace, key)

    def _learn_clock(self, server_us: Sequence[int]) -> None:
        """Keep the offset from this host's clock to the masters' (their median): arrivals are
        stamped on the masters' clock so that clients of many hosts compare alike."""
        if server_us:
            local = time.time_ns() // 1000
            self._offset_us = int(statistics.median(server_us)) - local

    def _arrival(self) -> int:
        """Now on the masters' clock (µs), as this client last saw it."""
        return time.time_ns() // 1000 + self._offset_us

    def _quorum_of(self, mode: Mode) -> int:
        return quorum(len(self._masters), mode.limit)

    async def _publish(self, key: str, message: int) -> None:
        """Tell ``changes`` watchers (elections only) after a change the quorum agrees on. (The
        masters' scripts never publish: one master's grant is not yet the quorum's.)"""
        if key.startswith("election/"):
            channel = self._prefix(key) + "changes"
            await self._each(lambda m: m.client.publish(channel, message), "publish")

    # Fan-out: one call per master, all at once; a master's failure is its answer.

    async def _one(
        self, master: _Master, call: Callable[[_Master], Awaitable[T]], what: str
    ) -> T | BackendError:
        try:
            with master.errors(what):
                return await call(master)
        except BackendError as exc:
            return exc

    async def _each(
        self,
        call: Callable[[_Master], Awaitable[T]],
        what: str,
        masters: Sequence[_Master] | None = None,
    ) -> list[T | BackendError]:
        targets = self._masters if masters is None else masters
        # tenure: begin async-only
        results = await asyncio.gather(
            *(self._one(m, call, what) for m in targets), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, BackendError):
                raise result  # a ConfigurationError (credentials), a cancellation
        return cast(list[T | BackendError], results)
        # tenure: end async-only
        # tenure: begin sync-only
        # pool = self._executor()
        # futures = [pool.submit(self._one, m, call, what) for m in targets]
        # return [future.result() for future in futures]
        # tenure: end sync-only

    # tenure: begin sync-only
    # def _executor(self) -> Any:
    #     """A bounded pool (two threads per master), made again in a forked child."""
    #     if self._pool is None or self._pool_pid != os.getpid():
    #         self._pool = ThreadPoolExecutor(
    #             max_workers=2 * len(self._masters), thread_name_prefix="tenure-redlock"
    #         )
    #         self._pool_pid = os.getpid()
    #     return self._pool
    # tenure: end sync-only

    async def _scripts(
        self,
        name: str,
        keys: list[str],
        args: list[Any],
        what: str,
        masters: Sequence[_Master] | None = None,
    ) -> list[Any]:
        """One script on every master (or ``masters``), all at once; a failure is an answer.

        The call is written to every master's connection first and the replies are read
        after, so the masters work in parallel and the whole fan-out waits about one round
        trip, at most ``node_timeout`` for the slowest master (one deadline for all). Replies
        come back in ``targets``' order.
        """
        targets = self._masters if masters is None else masters
        results: list[Any] = [None] * len(targets)
        pending: list[tuple[int, _Master, Any]] = []  # sent, reply not read yet
        packed: Any = None  # the same bytes for every master (same script, same SHA)
        # The first target last: it is the waiters' home master, whose wake-up (a release's
        # push) then comes after the release was sent to every other master; a woken waiter
        # rarely finds one of them still held.
        order = [*range(1, len(targets)), 0] if targets else []
        try:
            for i in order:
                master = targets[i]
                try:
                    with master.errors(what):
                        conn = await master.connection()
                        pending.append((i, master, conn))
                        if packed is None:
                            sha = getattr(master.scripts, name).sha
                            packed = pack_command("EVALSHA", sha, len(keys), *keys, *args)
                        await master.send(conn, packed)
                except BackendError as exc:
                    results[i] = exc
                    if pending and pending[-1][0] == i:
                        pending.pop()
                        await master.done_with(conn, broken=True)
            deadline = _compat.monotonic() + self._node_timeout
            while pending:
                i, master, conn = pending[0]
                broken = False
                try:
                    with master.errors(what):
                        results[i] = await master.read_by(conn, deadline)
                except BackendError as exc:
                    results[i] = exc
                    # After an error reply the connection is fine; else a reply may be due.
                    broken = not isinstance(exc.__cause__, redis_errors.ResponseError)
                pending.pop(0)
                await master.done_with(conn, broken=broken)
        finally:
            for _, master, conn in pending:  # interrupted (cancelled): their replies are due
                await master.done_with(conn, broken=True)
        # A master that lost its scripts (restart, SCRIPT FLUSH): the script object reloads it.
        for i, result in enumerate(results):
            if isinstance(result, BackendError) and isinstance(
                result.__cause__, redis_errors.NoScriptError
            ):
                results[i] = await self._one(
                    targets[i], lambda m: getattr(m.scripts, name)(keys=keys, args=args), what
                )
        return results

    def _unavailable(
        self, results: Sequence[object], what: str, need: int | None = None
    ) -> BackendUnavailableError:
        failed = [str(r) for r in results if isinstance(r, BackendError)]
        return BackendUnavailableError(
            f"redlock: only {len(results) - len(failed)} of {len(self._masters)} redis masters "
            f"answered ({what}; quorum {need or self._quorum}): " + "; ".join(failed)
        )

    async def connect(self) -> None:
        results = await self._each(lambda m: m.client.time(), "connect")
        self._learn_clock([r[0] * 1_000_000 + r[1] for r in results if isinstance(r, tuple)])
        if sum(1 for r in results if not isinstance(r, BackendError)) < self._quorum:
            for r in results:
                if isinstance(r, BackendError) and "DB index" in str(r.__cause__):
                    raise ConfigurationError(
                        f"redis masters have no database {self._url.path.strip('/')}"
                    ) from r.__cause__
            raise self._unavailable(results, "connect")

    async def close(self) -> None:
        for master in self._masters:
            with master.errors("close"):
                await master.close()
        # tenure: begin sync-only
        # if self._pool is not None and self._pool_pid == os.getpid():
        #     self._pool.shutdown(wait=False)
        # self._pool = None
        # tenure: end sync-only

    # Leases: as on Redis, entries carry the TTL themselves.

    async def grant_lease(self, ttl: float) -> Lease:
        if ttl <= 2 * self._node_timeout + ttl * self._drift_factor + 0.002:
            raise ConfigurationError(
                f"ttl {ttl} s is too short for redlock with node_timeout {self._node_timeout} s: "
                "a grant would expire before it is confirmed"
            )
        return Lease(id=new_owner_id()[:16], ttl=ttl)

    async def renew_lease(
        self, lease: Lease, grants: Sequence[Grant], timeout: float
    ) -> Sequence[Grant]:
        keys = [entry_key(self._prefix(grant.key), grant.mode) for grant in grants]
        args: list[Any] = [ms(lease.ttl), *(grant.owner.owner for grant in grants)]
        results = await self._scripts("renew", keys, args, "renew")
        answers = [r for r in results if not isinstance(r, BackendError)]
        # Too few answers to confirm an entry is a failed renewal (retried), not a loss.
        need = max((self._quorum_of(grant.mode) for grant in grants), default=self._quorum)
        if len(answers) < need:
            raise self._unavailable(results, "renew", need)
        kept = [0] * len(grants)
        for lost in answers:
            gone = {int(i) - 1 for i in lost}
            for i in range(len(grants)):
                kept[i] += i not in gone
        return [g for g, n in zip(grants, kept, strict=True) if n < self._quorum_of(g.mode)]

    async def revoke_lease(self, lease: Lease) -> None:
        return None

    # Contenders.

    async def acquire(
        self, lease: Lease, key: str, owner: OwnerInfo, deadline: float | None, mode: Mode
    ) -> Grant | None:
        keys = [self._prefix(key) + "holder"]
        try_once = deadline is not None and deadline <= _compat.monotonic()
        queued = not try_once  # (an interrupted first attempt may have queued us somewhere)
        done = False
        arrival = self._arrival()  # (one for every attempt: our place on every master)
        splits = 0
        try:
            while True:
                grant, home, pttl, split = await self._attempt(
                    lease, key, owner, mode, queued, arrival
                )
                if grant is not None:
                    done = True
                    await self._publish(key, grant.token)
                    return grant
                if try_once:
                    return None
                remaining = float("inf") if deadline is None else deadline - _compat.monotonic()
                if remaining <= 0:
                    return None
                if split:
                    # We held some masters but not a quorum (a split): Redlock's random delay,
                    # growing from 1 ms. Mostly the previous holder's release had not reached
                    # every master when its wake-up (from the home master) made us try; a
                    # split between two contenders cannot repeat for long either, for every
                    # master lets only the earliest live waiter have the key.
                    splits += 1
                    delay = min(self._retry_delay, 0.001 * 2 ** min(splits, 16))
                    await _compat.sleep(min(remaining, random.uniform(0.5, 1.0) * delay))
                    continue
                # Woken by a release on the home master, or when its first holder's TTL runs out
                # (or after a random delay if it has none), at least every TTL/3 (our records).
                wait = min(remaining, lease.ttl / 3, MAX_BLOCK)
                if pttl > 0:
                    wait = min(wait, pttl / 1000 + 0.001)
                else:
                    wait = min(wait, random.uniform(0.2, 1.0) * self._retry_delay)
                signal = self._prefix(key) + "s:" + owner.owner
                try:
                    with home.errors("wait"):
                        await home.blocking().blpop([signal], timeout=max(wait, 0.001))
                except BackendError:
                    pass  # the home master is gone: the next attempt picks another
                _compat.raise_if_cancelled()
        finally:
            if queued and not done:
                await self._scripts("leave", keys, [owner.owner, "w"], "leave")

    async def _attempt(
        self, lease: Lease, key: str, owner: OwnerInfo, mode: Mode, queue: bool, arrival: int
    ) -> tuple[Grant | None, _Master, int, bool]:
        """One Redlock round: (grant or None, home master, its first holder's PTTL ms, split).

        ``queue``: queue us where not granted. ``split``: we were granted some masters but
        could not keep them (no quorum, or the validity ran out), and gave them back."""
        started = _compat.monotonic()
        keys = [self._prefix(key) + "holder"]
        need = self._quorum_of(mode)
        flags = "nq" if queue else "n"
        args = [owner.owner, ms(lease.ttl), owner.meta, flags, *mode_args(mode), arrival]
        results = await self._scripts("acquire", keys, args, "acquire")
        granted = [
            (m, int(r[1]), int(r[2]))
            for m, r in zip(self._masters, results, strict=True)
            if not isinstance(r, BackendError) and int(r[0]) == 1
        ]
        if len(granted) >= need:
            token = max(t for _, t, _ in granted)
            behind = [m for m, t, _ in granted if t < token]
            at_token = len(granted) - len(behind)
            if behind:
                fence = [owner.owner, token]
                raised = await self._scripts("raise_token", keys, fence, "fence", behind)
                at_token += sum(1 for r in raised if not isinstance(r, BackendError) and r == 1)
            elapsed = _compat.monotonic() - started
            if at_token >= need and validity(lease.ttl, elapsed, self._drift_factor) > 0:
                if queue and len(granted) < len(self._masters):
                    # The masters that did not grant queued us: leave, or our stale entry
                    # would be first in line there and swallow every wake-up.
                    mine = {id(m) for m, _, _ in granted}
                    others = [m for m in self._masters if id(m) not in mine]
                    await self._scripts("leave", keys, [owner.owner, "w"], "leave", others)
                acquired_at = from_us(max(at for _, _, at in granted))
                grant = Grant(key, owner, token, lease, acquired_at, mode=mode)
                return grant, self._masters[0], 0, False
        # Give back whatever we may hold (also where the reply was lost), waking the waiters
        # of each master we free.
        maybe = [m for m, r in zip(self._masters, results, strict=True)
                 if isinstance(r, BackendError) or int(r[0]) == 1]  # fmt: skip
        if maybe:
            await self._scripts("release", keys, [owner.owner, "w"], "give back", maybe)
        answered = [
            (m, r) for m, r in zip(self._masters, results, strict=True)
            if not isinstance(r, BackendError)
        ]  # fmt: skip
        if len(answered) < need:
            raise self._unavailable(results, "acquire", need)  # (acquire's finally leaves queues)
        self._learn_clock([int(r[1]) for _, r in answered if int(r[0]) == 0])
        refused = Counter(int(r[1]) for _, r in answered if int(r[0]) == -1)
        if refused and len(answered) - refused.total() < need:
            # Too many masters hold contenders with another limit for a quorum to be possible.
            raise limit_mismatch(key.partition("/")[2], refused.most_common(1)[0][0], mode.limit)
        home, reply = answered[0]
        pttl = int(reply[2]) if int(reply[0]) == 0 else 0
        return None, home, pttl, bool(granted)

    async def release(self, grant: Grant) -> bool:
        keys = [self._prefix(grant.key) + "holder"]
        args: list[Any] = [grant.owner.owner, "w"]
        hold = hold_left(grant)
        if hold:
            # min_hold: every master keeps the entry, marked ended, for the rest of the hold,
            # plus the drift allowance (a master whose clock runs fast must not end it early).
            args.append(math.ceil((hold + hold * self._drift_factor + 0.002) * 1000))
        results = await self._scripts("release", keys, args, "release")
        released = sum(1 for r in results if not isinstance(r, BackendError) and r == 1)
        if released >= self._quorum_of(grant.mode):
            await self._publish(grant.key, 0)
            return True
        failed = sum(1 for r in results if isinstance(r, BackendError))
        if failed and released + failed >= self._quorum_of(grant.mode):
            raise self._unavailable(results, "release")  # retried; the retry counts as done
        return False

    async def _count(
        self, script: str, keys: list[str], args: list[Any], what: str, need: int
    ) -> bool:
        results = await self._scripts(script, keys, args, what)
        yes = sum(1 for r in results if not isinstance(r, BackendError) and r == 1)
        if yes >= need:
            return True
        if len([r for r in results if not isinstance(r, BackendError)]) < self._quorum:
            raise self._unavailable(results, what)
        return False

    async def check(self, grant: Grant) -> bool:
        key = entry_key(self._prefix(grant.key), grant.mode)
        need = self._quorum_of(grant.mode)
        return await self._count("check", [key], [grant.owner.owner], "check", need)

    async def set_value(self, grant: Grant, value: str) -> bool:
        key = self._prefix(grant.key) + "holder"
        args = [grant.owner.owner, json.dumps(value), ""]
        if not await self._count("set_value", [key], args, "set value", self._quorum):
            return False
        await self._publish(grant.key, grant.token)
        return True

    # Inspection: the holders that a quorum of masters names.

    async def _views(self, key: str) -> list[_View | BackendError]:
        keys = [self._prefix(key) + "holder"]
        views: list[_View | BackendError] = []
        for reply in await self._scripts("inspect", keys, [], "inspect"):
            if isinstance(reply, BackendError):
                views.append(reply)
            else:
                views.append((*holders_from_reply(key, reply), int(reply[2])))
        answers = [v for v in views if not isinstance(v, BackendError)]
        if len(answers) < self._quorum:
            raise self._unavailable(views, "inspect")
        return views

    def _quorum_holders(self, views: Sequence[_View | BackendError]) -> list[Holder]:
        by_owner: dict[str, list[Holder]] = {}
        limit = 0
        for view in views:
            if not isinstance(view, BackendError):
                limit = max(limit, view[2])
                for found in view[0]:
                    by_owner.setdefault(found.owner, []).append(found)
        holders = []
        for entries in by_owner.values():
            need = quorum(len(self._masters), limit if entries[0].mode == "permit" else 0)
            if len(entries) >= need:
                # The newest token; among its records, the value most masters have (a
                # proclaim may not have reached a minority yet).
                token = max(e.token for e in entries)
                newest = [e for e in entries if e.token == token]
                value = Counter(e.value for e in newest).most_common(1)[0][0]
                record = next(e for e in newest if e.value == value)
                # Held until fewer than a quorum of masters still have it.
                expiries = sorted((e.expires_in or 0.0 for e in entries), reverse=True)
                holders.append(dataclasses.replace(record, expires_in=expiries[need - 1]))
        holders.sort(key=lambda h: (h.mode != "exclusive", h.token))
        return holders

    async def holder(self, key: str) -> Holder | None:
        holders = self._quorum_holders(await self._views(key))
        return holders[0] if holders else None

    async def contenders(self, key: str) -> list[Holder]:
        views = await self._views(key)
        holders = self._quorum_holders(views)
        # Waiters in the order of the first master that answered (the home master).
        home = next(v for v in views if not isinstance(v, BackendError))
        held = {h.owner for h in holders}
        return holders + [w for w in home[1] if w.owner not in held]

    async def changes(self, key: str) -> AsyncIterator[None]:
        """Pub/sub on the first master that answers (every master publishes each change)."""
        channel = self._prefix(key) + "changes"
        first = True
        while True:
            for master in self._masters:
                pubsub = master.blocking().pubsub(ignore_subscribe_messages=True)
                try:
                    try:
                        with master.errors("subscribe"):
                            await pubsub.subscribe(channel)
                    except BackendError:
                        continue
                    # (Re)subscribed: the holder may have changed meanwhile.
                    yield
                    first = False
                    while True:
                        with master.errors("observe"):
                            message = await pubsub.get_message(timeout=MAX_BLOCK)
                        if message is not None:
                            yield
                except BackendError:
                    continue
                finally:
                    try:
                        with master.errors("unsubscribe"):
                            await pubsub.aclose()
                    except BackendError:
                        pass
            if first:
                raise BackendUnavailableError(
                    f"redlock: no redis master answered ({self._url.redacted()})"
                )
            await _compat.sleep(self._retry_delay)

    def forget_after_fork(self) -> None:
        """redis-py's pools notice the new pid and open fresh connections by themselves."""
        # tenure: sync self._pool = None  # threads do not survive fork

    # Listing (``tenure ls``): the names any master has (SCAN), each shown as ``contenders``
    # shows it (what a quorum names).

    async def in_use(self) -> dict[str, list[Holder]]:
        found: set[str] = set()
        answered = 0
        for master in self._masters:
            try:
                with master.errors("list"):
                    found |= await names_in_use(master.client, self._namespace, 1000)
                answered += 1
            except BackendError:
                continue
        if answered < self._quorum:
            raise BackendUnavailableError(
                f"redlock: only {answered} of {len(self._masters)} redis masters answered (list)"
            )
        listing: dict[str, list[Holder]] = {}
        for key in sorted(found):
            contenders = await self.contenders(key)
            if contenders:
                listing[key] = contenders
        return listing

    def namespace_changes(self) -> AsyncIterator[None]:
        return refreshes()  # locks publish nothing: look again at a bounded interval
