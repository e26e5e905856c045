"""What runs inside the measuring processes: uncontended loops, contended workers, renewal.

Contended workers share a few 64-bit slots (``multiprocessing.RawArray``). They are written only
inside the critical section, so the lock under test is the only thing that orders them; that is
the point: a second process inside the section shows up as an overlap or a lost increment.
``time.monotonic_ns()`` is CLOCK_MONOTONIC, one clock for every process on Linux, so a stamp
written by the releaser and read by the next holder gives the handoff latency.

An asyncio library (``Library.is_async``) is measured inside one running event loop, as an
asyncio application runs it: the uncontended loop and the whole contended worker loop run inside
one ``asyncio.run(...)``, never one ``run_until_complete`` per operation; the critical section
and its slots are the sync workers' own (:func:`_critical_section`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing.connection
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from benchmarks._impls import (
    AsyncBenchClient,
    AsyncFloorOp,
    BenchClient,
    FloorOp,
    Library,
    Target,
    count_redis_requests,
)

__all__ = [
    "ContendedArgs",
    "Slots",
    "contended_worker",
    "renewal",
    "run_worker",
    "run_worker_async",
    "uncontended",
    "uncontended_async",
]


class Slots:
    """Indexes into the shared array."""

    INSIDE = 0  # 1 + index of the worker inside the critical section, 0 if none
    COUNTER = 1  # protected counter, incremented by read + write inside the section
    LAST_HOLDER = 2  # 1 + index of the last worker to release, 0 before the first release
    LAST_RELEASE_NS = 3  # monotonic_ns() taken just before that release call
    START_NS = 4
    END_NS = 5
    SIZE = 8


@dataclass(frozen=True)
class ContendedArgs:
    library: Library
    target: Target
    name: str
    acquire_timeout: float
    max_grants: int
    max_errors: int = 50
    exit_wait: float = 120.0


def uncontended(
    library: Library,
    floor: Callable[[Target], FloorOp],
    target: Target,
    name: str,
    iterations: int,
    seconds: float,
    warmup: int,
) -> dict[str, list[int]]:
    """acquire + release of a free lock and the floor, timed per pair (ns), interleaved; and
    the client CPU time (ns) each side used in all (``floor_cpu``, ``lock_cpu``).

    Chunks of ``_CHUNK`` floor operations alternate with chunks of acquire + release in this one
    process, so that both see the same CPU placement (a loopback round trip is ~50 µs when client
    and server share a vCPU and ~85 µs when not, and the scheduler flips between the two).
    Bounded by ``iterations`` per side and ``seconds``.
    """
    client = library.client(target)
    floor_op, floor_close = floor(target)
    try:
        lock = client.lock(name)

        def pair() -> None:
            if not lock.acquire(5.0):
                raise RuntimeError(f"{library.label}: a free lock was not granted in 5 s")
            lock.release()

        for _ in range(warmup):
            pair()
            floor_op()
        out: dict[str, list[int]] = {"floor": [], "lock": [], "floor_cpu": [0], "lock_cpu": [0]}
        stop = time.monotonic() + seconds
        while len(out["lock"]) < iterations and time.monotonic() < stop:
            for key, op in (("floor", floor_op), ("lock", pair)):
                samples = out[key]
                cpu = time.process_time_ns()  # this process, all its threads
                for _ in range(min(_CHUNK, iterations - len(samples))):
                    t0 = time.monotonic_ns()
                    op()
                    samples.append(time.monotonic_ns() - t0)
                out[f"{key}_cpu"][0] += time.process_time_ns() - cpu
        return out
    finally:
        client.close()
        floor_close()


_CHUNK = 50


def uncontended_async(
    library: Library,
    floor: Callable[[Target], FloorOp],
    afloor: Callable[[Target], Awaitable[AsyncFloorOp]] | None,
    target: Target,
    name: str,
    iterations: int,
    seconds: float,
    warmup: int,
) -> dict[str, list[int]]:
    """:func:`uncontended` for an asyncio library, all inside one ``asyncio.run``: chunks of the
    asyncio floor (``afloor``, if the backend has one), of ``await acquire(); await release()``
    and of the sync floor (called from the same coroutine) alternate, each timed in the loop."""
    return asyncio.run(
        _uncontended_async(library, floor, afloor, target, name, iterations, seconds, warmup)
    )


async def _uncontended_async(
    library: Library,
    floor: Callable[[Target], FloorOp],
    afloor: Callable[[Target], Awaitable[AsyncFloorOp]] | None,
    target: Target,
    name: str,
    iterations: int,
    seconds: float,
    warmup: int,
) -> dict[str, list[int]]:
    client = library.async_client(target)
    floor_op, floor_close = floor(target)
    afloor_op, afloor_close = await afloor(target) if afloor is not None else (None, None)
    try:
        await client.open()
        lock = client.lock(name)

        async def pair() -> None:
            if not await lock.acquire(5.0):
                raise RuntimeError(f"{library.label}: a free lock was not granted in 5 s")
            await lock.release()

        # (key, awaited operation); None: the sync floor, called from this coroutine.
        sides: list[tuple[str, Callable[[], Awaitable[object]] | None]] = [
            ("lock", pair),
            ("floor", None),
        ]
        if afloor_op is not None:
            sides.insert(0, ("afloor", afloor_op))
        for _ in range(warmup):
            for _key, aop in sides:
                await aop() if aop is not None else floor_op()
        out: dict[str, list[int]] = {}
        for key, _aop in sides:
            out[key], out[f"{key}_cpu"] = [], [0]
        stop = time.monotonic() + seconds
        while len(out["lock"]) < iterations and time.monotonic() < stop:
            for key, aop in sides:
                samples = out[key]
                cpu = time.process_time_ns()
                n = min(_CHUNK, iterations - len(samples))
                if aop is not None:
                    for _ in range(n):
                        t0 = time.monotonic_ns()
                        await aop()
                        samples.append(time.monotonic_ns() - t0)
                else:
                    for _ in range(n):
                        t0 = time.monotonic_ns()
                        floor_op()
                        samples.append(time.monotonic_ns() - t0)
                out[f"{key}_cpu"][0] += time.process_time_ns() - cpu
        return out
    finally:
        with contextlib.suppress(Exception):
            await client.close()
        floor_close()
        if afloor_close is not None:
            await afloor_close()


def contended_worker(
    args: ContendedArgs,
    index: int,
    shared: Any,
    ready: Any,
    start: Any,
    leave: Any,
    send: multiprocessing.connection.Connection,
) -> None:
    """One contending process: loop acquire → critical section → release until END_NS (an
    asyncio library: the whole worker inside one ``asyncio.run``)."""
    if args.library.is_async:
        asyncio.run(
            run_worker_async(
                args.library,
                args.target,
                args.name,
                index,
                shared,
                ready,
                start,
                leave,
                send,
                functools.partial(_contend_async, args),
                exit_wait=args.exit_wait,
            )
        )
        return
    run_worker(
        args.library,
        args.target,
        args.name,
        index,
        shared,
        ready,
        start,
        leave,
        send,
        functools.partial(_contend, args),
        exit_wait=args.exit_wait,
    )


def run_worker(
    library: Library,
    target: Target,
    name: str,
    index: int,
    shared: Any,
    ready: Any,
    start: Any,
    leave: Any,
    send: multiprocessing.connection.Connection,
    loop: Callable[[Any, int, int, Any, dict[str, Any]], None],
    *,
    exit_wait: float,
    extra: dict[str, Any] | None = None,
) -> None:
    """A contending process's frame: connect and warm up, wait for the start, run
    ``loop(lock, me, end_ns, shared, result)``, send the result (plus ``extra``'s keys)."""
    me = index + 1
    result = _new_result(extra)
    client: BenchClient | None = None
    requests = count_redis_requests() if target.backend == "redis" else (lambda: 0)
    try:
        client = library.client(target)
        # Open connections and load scripts before the clock starts, on another name.
        warm = client.lock(f"{name}-warm-{index}")
        if warm.acquire(5.0):
            warm.release()
        lock = client.lock(name)
        ready.release()
        if not start.wait(60):
            raise RuntimeError("the start signal never came")
        start_ns, end_ns = shared[Slots.START_NS], shared[Slots.END_NS]
        while time.monotonic_ns() < start_ns:
            time.sleep(0.0005)
        sent, cpu = requests(), time.process_time()
        try:
            loop(lock, me, end_ns, shared, result)
        finally:
            result["requests"] = requests() - sent
            result["cpu_s"] = time.process_time() - cpu
    except Exception as exc:
        _record_error(result, exc)
    finally:
        ready.release()  # harmless extra if already released: the runner counts results
        send.send(result)
        send.close()
        leave.wait(exit_wait)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def _new_result(extra: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "grants": 0,
        "grants_in_window": 0,
        "timeouts": 0,
        "errors": 0,
        "overlaps": 0,
        "self_reacquire": 0,
        "handoffs_ns": [],
        "first_error": "",
        "requests": 0,
        **(extra or {}),
    }


def _record_error(result: dict[str, Any], exc: BaseException) -> None:
    result["errors"] += 1
    result["first_error"] = result["first_error"] or f"{type(exc).__name__}: {exc}"


async def run_worker_async(
    library: Library,
    target: Target,
    name: str,
    index: int,
    shared: Any,
    ready: Any,
    start: Any,
    leave: Any,
    send: multiprocessing.connection.Connection,
    loop: Callable[[Any, int, int, Any, dict[str, Any]], Awaitable[None]],
    *,
    exit_wait: float,
    extra: dict[str, Any] | None = None,
) -> None:
    """:func:`run_worker` for an asyncio library, run inside the worker's one event loop; the
    waits for the start and the leave signals poll, so that the client's own tasks (lease
    keep-alive, connections) keep running meanwhile."""
    me = index + 1
    result = _new_result(extra)
    client: AsyncBenchClient | None = None
    requests = count_redis_requests() if target.backend == "redis" else (lambda: 0)
    try:
        client = library.async_client(target)
        await client.open()
        warm = client.lock(f"{name}-warm-{index}")
        if await warm.acquire(5.0):
            await warm.release()
        lock = client.lock(name)
        ready.release()
        if not await _event_set(start, 60.0):
            raise RuntimeError("the start signal never came")
        start_ns, end_ns = shared[Slots.START_NS], shared[Slots.END_NS]
        await asyncio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9 - 0.002))
        # The last 2 ms by yielding (the loop's timers are ms-coarse): a clock, not an event.
        while time.monotonic_ns() < start_ns:  # noqa: ASYNC110
            await asyncio.sleep(0)
        sent, cpu = requests(), time.process_time()
        try:
            await loop(lock, me, end_ns, shared, result)
        finally:
            result["requests"] = requests() - sent
            result["cpu_s"] = time.process_time() - cpu
    except Exception as exc:
        _record_error(result, exc)
    finally:
        ready.release()
        send.send(result)
        send.close()
        await _event_set(leave, exit_wait)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


async def _event_set(event: Any, timeout: float) -> bool:
    """Wait for a multiprocessing Event without blocking the running loop (bounded)."""
    deadline = time.monotonic() + timeout
    while not event.is_set():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def _critical_section(
    me: int, t_acquired: int, end_ns: int, shared: Any, result: dict[str, Any]
) -> None:
    """Inside the lock: check and set INSIDE, bump COUNTER, read the previous release's stamp,
    and stamp LAST_RELEASE_NS just before the caller releases."""
    if shared[Slots.INSIDE] != 0:
        result["overlaps"] += 1
    shared[Slots.INSIDE] = me
    shared[Slots.COUNTER] = shared[Slots.COUNTER] + 1
    previous, released_ns = shared[Slots.LAST_HOLDER], shared[Slots.LAST_RELEASE_NS]
    result["grants"] += 1
    if t_acquired <= end_ns:
        result["grants_in_window"] += 1
        if previous == me:
            result["self_reacquire"] += 1
        elif previous != 0:
            result["handoffs_ns"].append(t_acquired - released_ns)
    if shared[Slots.INSIDE] != me:
        result["overlaps"] += 1
    shared[Slots.INSIDE] = 0
    shared[Slots.LAST_HOLDER] = me
    shared[Slots.LAST_RELEASE_NS] = time.monotonic_ns()


def _contend(
    args: ContendedArgs, lock: Any, me: int, end_ns: int, shared: Any, result: dict[str, Any]
) -> None:
    while time.monotonic_ns() < end_ns and result["grants"] < args.max_grants:
        try:
            ok = lock.acquire(args.acquire_timeout)
        except Exception as exc:
            if "not supported" in str(exc):  # a mode the driver lacks: no point retrying
                raise
            _record_error(result, exc)
            if result["errors"] >= args.max_errors:
                return
            time.sleep(0.01)
            continue
        t_acquired = time.monotonic_ns()
        if not ok:
            result["timeouts"] += 1
            continue
        _critical_section(me, t_acquired, end_ns, shared, result)
        try:
            lock.release()
        except Exception as exc:
            _record_error(result, exc)
            if result["errors"] >= args.max_errors:
                return


async def _contend_async(
    args: ContendedArgs, lock: Any, me: int, end_ns: int, shared: Any, result: dict[str, Any]
) -> None:
    """:func:`_contend` with awaits, in the worker's one event loop."""
    while time.monotonic_ns() < end_ns and result["grants"] < args.max_grants:
        try:
            ok = await lock.acquire(args.acquire_timeout)
        except Exception as exc:
            if "not supported" in str(exc):
                raise
            _record_error(result, exc)
            if result["errors"] >= args.max_errors:
                return
            await asyncio.sleep(0.01)
            continue
        t_acquired = time.monotonic_ns()
        if not ok:
            result["timeouts"] += 1
            continue
        _critical_section(me, t_acquired, end_ns, shared, result)
        try:
            await lock.release()
        except Exception as exc:
            _record_error(result, exc)
            if result["errors"] >= args.max_errors:
                return


def renewal(target: Target, locks: int, repeats: int) -> dict[str, Any]:
    """One session holding ``locks`` locks: round trips and latency of one ``_renew()``."""
    import tenure
    from benchmarks._impls import RedisCommandStats, delta

    stats = RedisCommandStats(target)
    requests = count_redis_requests()
    client = tenure.connect(target.url, ttl=LOCK_TTL_RENEWAL)
    try:
        session = client.session(ttl=LOCK_TTL_RENEWAL)
        held = [session.lock(f"renew-{i}") for i in range(locks)]
        t0 = time.monotonic()
        for lock in held:
            if not lock.acquire(timeout=5.0):
                raise RuntimeError("a free lock was not granted in 5 s")
        acquire_all = time.monotonic() - t0
        first_sent = requests()
        session._renew()  # the first call in a process may load the script (NOSCRIPT + LOAD)
        first_requests = requests() - first_sent
        samples: list[int] = []
        round_trips: list[int] = []
        commands: list[dict[str, int]] = []
        for _ in range(repeats):
            before = stats()
            sent = requests()
            t1 = time.monotonic_ns()
            alive = session._renew()
            samples.append(time.monotonic_ns() - t1)
            round_trips.append(requests() - sent)
            commands.append(delta(before, stats()))
            if not alive:
                raise RuntimeError("the session ended during the renewal benchmark")
        lost = sum(1 for lock in held if not lock.held)
        for lock in held:
            lock.release()
        return {
            "locks": locks,
            "acquire_all_s": acquire_all,
            "samples_ns": samples,
            "round_trips": round_trips,
            "commands": commands,
            "locks_lost": lost,
            "first_renewal_requests": first_requests,
        }
    finally:
        client.close()
        stats.close()


LOCK_TTL_RENEWAL = 30.0
