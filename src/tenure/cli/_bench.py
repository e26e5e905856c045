"""``tenure bench``: measure tenure on the user's own deployment.

Three measurements, in one run, against the URL given (``--url``, ``$TENURE_URL``, or the file
backend):

- the **floor**: two minimal round trips with the backend's own client library (Redis: PING;
  PostgreSQL: SELECT 1; etcd: one Txn creating a key + one DeleteRange, over tenure's gRPC
  stubs; files: open + fcntl lock + unlock + close). Backends without a floor here show none;
- **uncontended** acquire + release of one lock in one process (p50, p99, ratio to the floor);
- **contended**: N local processes on one name for a few seconds: acquisitions per second,
  handoff latency (release by one process to the next process's grant, through monotonic
  stamps in shared memory), fairness (fewest / most grants per process) and overlaps at a
  counter only the lock protects (anything but 0 is a broken lock: exit status 1).

The deeper comparison with peer libraries lives in the repository's ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import multiprocessing
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import tenure

from ._common import Progress, connect, shown_url, stderr_is_tty

__all__ = ["cmd_bench"]

_SPAWN = multiprocessing.get_context("spawn")
# Shared slots: who is inside, the protected counter, the last releaser and its stamp, go/stop.
_INSIDE, _COUNTER, _LAST_HOLDER, _LAST_RELEASE_NS, _GO, _STOP = range(6)
_MAX_SAMPLES = 20_000  # handoff samples kept per worker


def cmd_bench(args: argparse.Namespace) -> int:
    namespace = args.namespace or f"tenure-bench-{uuid.uuid4().hex[:8]}"
    # Connect once first: a bad URL fails fast with a clear message.
    with connect(args.url, namespace) as client:
        url_shown = shown_url(client)
    url = args.url or os.environ.get("TENURE_URL") or url_shown
    progress = _Reporter()
    result: dict[str, Any] = {
        "url": url_shown,
        "tenure": tenure.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        floor = _floor_for(url, namespace)
        progress.say("floor" if floor else "no floor for this backend")
        floor_us = _time(floor[1], args.iterations, progress, "floor") if floor else None
        if floor is not None:
            floor[2]()
        result["floor"] = None if floor is None else {"what": floor[0], **_summary(floor_us)}
        progress.say("uncontended acquire + release")
        with tenure.connect(url, namespace=namespace) as bench_client:
            lock = bench_client.lock(f"uncontended-{uuid.uuid4().hex[:8]}")

            def once() -> None:
                lock.acquire()
                lock.release()

            samples = _time(once, args.iterations, progress, "uncontended")
        uncontended = _summary(samples)
        if floor_us:
            uncontended["p50_over_floor"] = round(
                uncontended["p50_us"] / statistics.median(floor_us), 2
            )
        result["uncontended"] = uncontended
        result["contended"] = []
        for procs in args.procs:
            progress.say(f"contended: {procs} processes for {args.seconds:g} s")
            result["contended"].append(
                _contended(url, namespace, procs, args.seconds, args.timeout, progress)
            )
    finally:
        progress.done()
    overlaps = sum(run["overlaps"] for run in result["contended"])
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 1 if overlaps else 0


class _Reporter:
    """Progress on stderr: one redrawn line on a terminal, else a line per phase."""

    def __init__(self) -> None:
        self._tty = stderr_is_tty()
        self._line = Progress(sys.stderr) if self._tty else None

    def say(self, text: str) -> None:
        if self._line is not None:
            self._line.show(f"tenure bench: {text} ...")
        else:
            print(f"tenure bench: {text} ...", file=sys.stderr, flush=True)

    def update(self, text: str) -> None:
        if self._line is not None:
            self._line.show(f"tenure bench: {text}")

    def done(self) -> None:
        if self._line is not None:
            self._line.clear()


def _time(op: Callable[[], object], iterations: int, progress: _Reporter, what: str) -> list[float]:
    for _ in range(min(50, iterations)):  # warm up: connections, prepared statements, caches
        op()
    samples: list[float] = []
    for i in range(iterations):
        start = time.perf_counter_ns()
        op()
        samples.append((time.perf_counter_ns() - start) / 1000)
        if i % 200 == 0:
            progress.update(f"{what}: {i}/{iterations}")
    return samples


def _summary(samples_us: list[float] | None) -> dict[str, Any]:
    if not samples_us:
        return {"samples": 0}
    ordered = sorted(samples_us)
    return {
        "samples": len(ordered),
        "p50_us": round(statistics.median(ordered), 1),
        "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
    }


# Floors: what any lock must cost on this backend, with the backend's own client library.


def _floor_for(
    url: str, namespace: str
) -> tuple[str, Callable[[], None], Callable[[], None]] | None:
    """(label, two round trips, close) for the URL's backend, or None."""
    parts = urlsplit(url)
    bare = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    scheme = parts.scheme
    if scheme in ("redis", "rediss"):
        import redis  # noqa: PLC0415 -- optional: the redis extra

        client = redis.Redis.from_url(bare)

        def pings() -> None:
            client.ping()
            client.ping()

        return "2 x PING (redis-py)", pings, client.close
    if scheme in ("postgresql", "postgres"):
        import psycopg  # noqa: PLC0415 -- optional: the postgres extra

        conn = psycopg.connect(bare, autocommit=True, prepare_threshold=0)

        def selects() -> None:
            conn.execute("SELECT 1").fetchone()
            conn.execute("SELECT 1").fetchone()

        return "2 x SELECT 1 (psycopg)", selects, conn.close
    if scheme in ("etcd", "etcds"):
        return _etcd_floor(url, namespace)
    if scheme == "file":
        directory = tempfile.mkdtemp(prefix="tenure-bench-floor-", dir=parts.path or None)
        path = os.path.join(directory, "floor.lock")
        lock = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        unlock = struct.pack("hhqqi4x", fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0)
        setlk = getattr(fcntl, "F_OFD_SETLK", fcntl.F_SETLK)

        def lock_unlock() -> None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.fcntl(fd, setlk, lock)
                fcntl.fcntl(fd, setlk, unlock)
            finally:
                os.close(fd)

        def remove() -> None:
            with contextlib.suppress(OSError):
                os.unlink(path)
                os.rmdir(directory)

        return "open + fcntl lock + unlock + close", lock_unlock, remove
    return None


def _etcd_floor(url: str, namespace: str) -> tuple[str, Callable[[], None], Callable[[], None]]:
    """Txn (create a key if absent) + DeleteRange on the driver's own channel: the same stubs,
    TLS and credentials as tenure, none of its logic."""
    from tenure._etcdpb import rpc_pb2 as pb  # noqa: PLC0415 -- optional: the etcd extra

    client = tenure.connect(url, namespace=namespace)
    driver: Any = client._driver
    endpoint = driver._endpoint()
    metadata = driver._metadata(endpoint)
    key = f"{namespace}/bench-floor/{uuid.uuid4().hex}".encode()
    absent = pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL)
    create = pb.TxnRequest(
        compare=[absent], success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"x"))]
    )
    delete = pb.DeleteRangeRequest(key=key)

    def txn_and_delete() -> None:
        endpoint.kv.Txn(create, timeout=5, metadata=metadata)
        endpoint.kv.DeleteRange(delete, timeout=5, metadata=metadata)

    return "Txn + DeleteRange (grpc, tenure's stubs)", txn_and_delete, client.close


# Contended: N processes, one name.


def _contended(
    url: str, namespace: str, procs: int, seconds: float, timeout: float, progress: _Reporter
) -> dict[str, Any]:
    shared: Any = _SPAWN.RawArray("q", 8)
    name = f"contended-{uuid.uuid4().hex[:8]}"
    pipes: list[Connection] = []
    workers = []
    for index in range(procs):
        ours, theirs = _SPAWN.Pipe(duplex=False)
        proc = _SPAWN.Process(
            target=_worker,
            args=(url, namespace, name, index, shared, theirs, timeout),
            name=f"tenure-bench-{index}",
            daemon=True,
        )
        proc.start()
        theirs.close()
        pipes.append(ours)
        workers.append(proc)
    try:
        ready = 0
        deadline = time.monotonic() + 60
        for pipe in pipes:  # each worker says "ready" once connected
            if pipe.poll(max(0.0, deadline - time.monotonic())):
                pipe.recv()
                ready += 1
        if ready < procs:
            raise tenure.BackendError(f"only {ready} of {procs} bench processes started")
        started = time.monotonic()
        shared[_GO] = 1
        for _ in range(int(seconds * 10) + 1):  # bounded: the run's length in 0.1 s steps
            left = started + seconds - time.monotonic()
            if left <= 0:
                break
            progress.update(f"contended: {procs} processes, {shared[_COUNTER]} grants")
            time.sleep(min(0.1, left))
        shared[_STOP] = 1
        elapsed = time.monotonic() - started
        reports = []
        for pipe in pipes:
            if pipe.poll(timeout + 30):
                reports.append(pipe.recv())
    finally:
        shared[_STOP] = 1
        for proc in workers:
            proc.join(timeout + 30)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    grants = [r["grants"] for r in reports]
    handoffs = [s for r in reports for s in r["handoffs"]]
    total = sum(grants)
    counted = shared[_COUNTER]
    overlaps = sum(r["overlaps"] for r in reports) + abs(total - counted)
    return {
        "processes": procs,
        "seconds": round(elapsed, 2),
        "acquisitions": total,
        "acquisitions_per_s": round(total / elapsed, 1) if elapsed > 0 else 0.0,
        "handoff": _summary(handoffs),
        "fairness": round(min(grants) / max(grants), 2) if grants and max(grants) else 0.0,
        "overlaps": overlaps,
        "timeouts": sum(r["timeouts"] for r in reports),
        "errors": [e for r in reports for e in r["errors"]][:5],
        "reported": len(reports),
    }


def _worker(
    url: str,
    namespace: str,
    name: str,
    index: int,
    shared: Any,
    pipe: Connection,
    timeout: float,
) -> None:
    """One contending process: acquire, check and bump the counter, stamp, release; repeat."""
    me = index + 1
    grants = overlaps = timeouts = 0
    handoffs: list[float] = []
    errors: list[str] = []
    try:
        with tenure.connect(url, namespace=namespace) as client:
            lock = client.lock(name)
            pipe.send("ready")
            for _ in range(60_000):  # bounded: waits for the start, a few ms at most each
                if shared[_GO] or shared[_STOP]:
                    break
                time.sleep(0.001)
            for _ in range(10_000_000):  # bounded; the real bound is the stop flag
                if shared[_STOP]:
                    break
                try:
                    if not lock.acquire(timeout=timeout):
                        timeouts += 1
                        continue
                except tenure.TenureError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    if len(errors) > 20:
                        break
                    continue
                now = time.monotonic_ns()
                if shared[_INSIDE] != 0:
                    overlaps += 1
                shared[_INSIDE] = me
                last = shared[_LAST_HOLDER]
                if last not in (0, me) and len(handoffs) < _MAX_SAMPLES:
                    handoffs.append((now - shared[_LAST_RELEASE_NS]) / 1000)
                shared[_COUNTER] = shared[_COUNTER] + 1
                grants += 1
                shared[_INSIDE] = 0
                shared[_LAST_HOLDER] = me
                shared[_LAST_RELEASE_NS] = time.monotonic_ns()
                lock.release()
    except tenure.TenureError as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    pipe.send(
        {
            "grants": grants,
            "overlaps": overlaps,
            "timeouts": timeouts,
            "handoffs": handoffs,
            "errors": errors,
        }
    )


def _us(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:,.2f} ms" if value >= 1000 else f"{value:,.0f} µs"


def _print_table(result: dict[str, Any]) -> None:
    print(
        f"tenure bench  {result['url']}  (tenure {result['tenure']}, Python "
        f"{result['python']}, {result['cpus']} CPUs)"
    )
    floor = result["floor"]
    rows: list[tuple[str, str]] = []
    if floor is not None:
        rows.append(
            (f"floor: {floor['what']}", f"p50 {_us(floor['p50_us'])}  p99 {_us(floor['p99_us'])}")
        )
    u = result["uncontended"]
    ratio = f"  = {u['p50_over_floor']:.2f} x floor" if "p50_over_floor" in u else ""
    rows.append(
        ("uncontended acquire + release", f"p50 {_us(u['p50_us'])}  p99 {_us(u['p99_us'])}{ratio}")
    )
    for run in result["contended"]:
        h = run["handoff"]
        rows.append(
            (
                f"contended, {run['processes']} processes",
                f"{run['acquisitions_per_s']:,.0f} acq/s  handoff p50 {_us(h.get('p50_us'))}  "
                f"p99 {_us(h.get('p99_us'))}  fairness {run['fairness']:.2f}  "
                f"overlaps {run['overlaps']}"
                + (f"  timeouts {run['timeouts']}" if run["timeouts"] else ""),
            )
        )
    width = max(len(label) for label, _ in rows)
    for label, text in rows:
        print(f"  {label:<{width}}  {text}")
    for run in result["contended"]:
        for error in run["errors"]:
            print(f"  ! {run['processes']} processes: {error}")
        if run["overlaps"]:
            print(f"  ! {run['processes']} processes: MUTUAL EXCLUSION FAILED")
