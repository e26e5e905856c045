"""The runner: ``python -m benchmarks [--quick]``.

One run = spinners on every CPU, then per backend one server for the whole run, then ``rounds``
rounds of: floor, uncontended acquire+release per library, contended runs per library and
process count, (Redis) renewal of 1,000 locks, then the rwlock and semaphore scenarios
(``_primitives``: each against tenure's plain lock in the same round, and the peers that have
such primitives). An asyncio row (``tenure aio``) is timed inside one event loop, beside the
backend's asyncio floor, and compared with its sync twin. The library order rotates between
rounds. Every measurement runs in forked children bounded in time and count; a child that
overruns is killed by its PID and recorded as a failure. Results: results/latest.{json,md,png}
(``--primitives`` alone: results/primitives.*).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import report
from benchmarks._env import (
    CTX,
    ChildFailed,
    Spinners,
    busy_fraction,
    call_in_child,
    machine_info,
    stop_process,
)
from benchmarks._impls import Library, RedisCommandStats, Target, delta
from benchmarks._primitives import (
    PrimLibrary,
    Scenario,
    SharedArgs,
    is_unsupported,
    primitive_libraries,
    probe,
    scenarios,
    shared_metrics,
    shared_worker,
    summarize_primitives,
    tenure_lock_floor,
    uncontended_roles,
)
from benchmarks._stats import summarize, summarize_rounds
from benchmarks._workers import (
    ContendedArgs,
    Slots,
    contended_worker,
    renewal,
    uncontended,
    uncontended_async,
)
from benchmarks.backends import BACKENDS, Backend

__all__ = ["Config", "main"]

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
DISTS = (
    "tenure", "redis", "python-redis-lock", "pottery", "tooz", "fasteners", "matplotlib",
    "kazoo", "psycopg", "filelock", "portalocker",
)  # fmt: skip


@dataclass(frozen=True)
class Config:
    quick: bool
    rounds: int
    duration: float
    iterations: int
    warmup: int
    procs: tuple[int, ...]
    command_procs: tuple[int, ...]
    acquire_timeout: float
    renewal_locks: int
    renewal_repeats: int
    max_grants: int
    backends: tuple[str, ...]
    libraries: tuple[str, ...] | None
    out: Path
    chart: bool
    from_json: Path | None = None
    locks: bool = True  # the lock rows (floor, uncontended, contended, renewal)
    primitives: bool = True  # the rwlock and semaphore rows
    primitive_procs: int = 8
    rw_readers: tuple[int, ...] = (2, 32)  # readers beside one writer (and primitive_procs - 1)

    def describe(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "rounds": self.rounds,
            "contended_seconds": self.duration,
            "uncontended_iterations": self.iterations,
            "warmup": self.warmup,
            "processes": list(self.procs),
            "command_processes": list(self.command_procs),
            "acquire_timeout_s": self.acquire_timeout,
            "renewal_locks": self.renewal_locks,
            "renewal_repeats": self.renewal_repeats,
            "max_grants_per_worker": self.max_grants,
            "backends": list(self.backends),
            "locks": self.locks,
            "primitives": self.primitives,
            "primitive_processes": self.primitive_procs,
            "rw_readers": sorted({self.primitive_procs - 1, *self.rw_readers}),
        }


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="tenure's benchmarks against floors and peers"
    )
    parser.add_argument("--quick", action="store_true", help="1 round, 2 s runs (CI smoke)")
    parser.add_argument("--rounds", type=int, help="rounds (3 full, 1 quick)")
    parser.add_argument("--duration", type=float, help="seconds per contended run (5 / 2)")
    parser.add_argument("--iterations", type=int, help="uncontended samples (3000 / 500)")
    parser.add_argument("--procs", type=_ints, default=(8, 32), help="contended process counts")
    parser.add_argument(
        "--command-procs", type=_ints, default=(2, 8, 32), help="tenure's commands-per-grant sweep"
    )
    parser.add_argument("--acquire-timeout", type=float, default=1.0, help="per acquire, seconds")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--libraries", help="comma-separated library keys (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    parser.add_argument(
        "--from-json", type=Path, help="only re-render the Markdown and PNG from a results JSON"
    )
    rows = parser.add_mutually_exclusive_group()
    rows.add_argument(
        "--primitives",
        action="store_true",
        help="only the rwlock and semaphore rows (written to primitives.{json,md})",
    )
    rows.add_argument(
        "--no-primitives", action="store_true", help="only the lock rows (as before rwlocks)"
    )
    parser.add_argument(
        "--primitive-procs", type=int, default=8, help="processes of the rwlock/semaphore runs"
    )
    parser.add_argument(
        "--rw-readers",
        type=_ints,
        default=(2, 32),
        help="readers beside one writer, besides primitive-procs - 1 (writer-wait sweep)",
    )
    ns = parser.parse_args(argv)
    backends = tuple(b.strip() for b in ns.backends.split(",") if b.strip())
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; known: {list(BACKENDS)}")
    return Config(
        quick=ns.quick,
        rounds=ns.rounds or (1 if ns.quick else 3),
        duration=ns.duration or (2.0 if ns.quick else 5.0),
        iterations=ns.iterations or (500 if ns.quick else 3000),
        warmup=50,
        procs=ns.procs,
        command_procs=ns.command_procs,
        acquire_timeout=ns.acquire_timeout,
        renewal_locks=1000,
        renewal_repeats=5 if ns.quick else 20,
        max_grants=1_000_000,
        backends=backends,
        libraries=tuple(ns.libraries.split(",")) if ns.libraries else None,
        out=ns.out,
        chart=not ns.no_chart,
        from_json=ns.from_json,
        locks=not ns.primitives,
        primitives=not ns.no_primitives,
        primitive_procs=ns.primitive_procs,
        rw_readers=ns.rw_readers,
    )


# One contended run.


def contended(
    backend: Backend,
    target: Target,
    library: Library,
    procs: int,
    name: str,
    cfg: Config,
) -> dict[str, Any]:
    """``procs`` forked workers on one name for ``cfg.duration`` s; metrics of this run."""
    args = ContendedArgs(library, target, name, cfg.acquire_timeout, cfg.max_grants)
    run = _run_workers(
        backend, target, contended_worker, args, procs, Slots.SIZE, cfg, library.label
    )
    results, missing = run.results, run.missing
    metrics = _contended_metrics(results, missing, procs, run.counter, cfg.duration)
    metrics.update(_costs(results, metrics["grants_total"], run))
    return metrics


def contended_shared(
    backend: Backend, target: Target, scenario: Scenario, name: str, cfg: Config
) -> dict[str, Any]:
    """A scenario with several holders at once (``_primitives.shared_worker``)."""
    args = SharedArgs(
        tuple(scenario.workers()), target, name, cfg.acquire_timeout, cfg.max_grants,
        limit=scenario.limit if scenario.kind == "sem" else 0,
    )  # fmt: skip
    run = _run_workers(
        backend, target, shared_worker, args, scenario.procs, args.slots, cfg, scenario.label
    )
    results = run.results
    total = sum(r["grants"] for r in results)
    metrics: dict[str, Any] = {
        "processes": scenario.procs,
        "workers_reported": len(results),
        **shared_metrics(results, cfg.duration),
        "grants_total": total,
        "overlaps": sum(r["overlaps"] for r in results),
        "timeouts": sum(r["timeouts"] for r in results),
        "errors": sum(r["errors"] for r in results) + run.missing,
    }
    first_errors = sorted({r["first_error"] for r in results if r["first_error"]})
    if first_errors:
        metrics["first_errors"] = first_errors[:3]
    metrics.update(_costs(results, total, run))
    return metrics


@dataclass
class _Run:
    results: list[dict[str, Any]]
    missing: int  # workers that sent no result in time
    counter: int  # the protected counter at the end
    before: dict[str, int]  # server request counters around the run (commandstats backends)
    after: dict[str, int]
    server_cpu: float


def _run_workers(
    backend: Backend,
    target: Target,
    worker: Any,
    args: Any,
    procs: int,
    slots: int,
    cfg: Config,
    label: str,
) -> _Run:
    """Fork ``procs`` ``worker(args, index, shared, ...)`` processes, start them together for
    ``cfg.duration`` s, collect their results (bounded), stop them by PID."""
    shared = CTX.RawArray("q", slots)
    ready, start, leave = CTX.Semaphore(0), CTX.Event(), CTX.Event()
    pipes = []
    workers = []
    stats = (backend.stats or RedisCommandStats)(target) if backend.commandstats else None
    try:
        for index in range(procs):
            recv, send = CTX.Pipe(duplex=False)
            proc = CTX.Process(
                target=worker,
                args=(args, index, shared, ready, start, leave, send),
                daemon=True,
            )
            proc.start()
            send.close()
            pipes.append(recv)
            workers.append(proc)
        deadline = time.monotonic() + 60 + procs
        for _ in range(procs):
            if not ready.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise ChildFailed(f"{label}: workers not ready within the deadline")
        before = stats() if stats else {}
        cpu_before = stats.cpu_seconds() if stats else math.nan
        begin = time.monotonic_ns() + 100_000_000  # 100 ms for every worker to be waiting
        shared[Slots.START_NS] = begin
        shared[Slots.END_NS] = begin + int(cfg.duration * 1e9)
        start.set()
        results: list[dict[str, Any]] = []
        collect_by = time.monotonic() + 0.1 + cfg.duration + 2 * cfg.acquire_timeout + 30
        missing = 0
        for recv in pipes:
            remaining = max(0.0, collect_by - time.monotonic())
            if recv.poll(remaining):
                try:
                    results.append(recv.recv())
                except EOFError:
                    missing += 1
            else:
                missing += 1
        after = stats() if stats else {}
        server_cpu = (stats.cpu_seconds() - cpu_before) if stats else math.nan
        counter = shared[Slots.COUNTER]
    finally:
        leave.set()
        for proc in workers:
            proc.join(10)
            stop_process(proc)
        for recv in pipes:
            recv.close()
        if stats:
            stats.close()
    return _Run(results, missing, counter, before, after, server_cpu)


def _contended_metrics(
    results: list[dict[str, Any]],
    missing: int,
    procs: int,
    counter: int,
    duration: float,
) -> dict[str, Any]:
    grants = [r["grants_in_window"] for r in results]
    handoffs = [h for r in results for h in r["handoffs_ns"]]
    total_grants = sum(r["grants"] for r in results)
    self_reacquire = sum(r["self_reacquire"] for r in results)
    handoff = summarize(handoffs)
    overlaps = sum(r["overlaps"] for r in results)
    lost_updates = total_grants - counter if missing == 0 else 0
    metrics: dict[str, Any] = {
        "processes": procs,
        "workers_reported": len(results),
        "acq_per_s": sum(grants) / duration,
        "grants": sum(grants),
        "grants_total": total_grants,
        "handoff_p50_us": handoff["p50_us"],
        "handoff_p99_us": handoff["p99_us"],
        "handoffs": len(handoffs),
        "fairness": (min(grants) / max(grants)) if grants and max(grants) > 0 else 0.0,
        "self_reacquire": self_reacquire / (self_reacquire + len(handoffs))
        if (self_reacquire + len(handoffs))
        else math.nan,
        "overlaps": overlaps + max(0, lost_updates),
        "timeouts": sum(r["timeouts"] for r in results),
        "errors": sum(r["errors"] for r in results) + missing,
    }
    first_errors = sorted({r["first_error"] for r in results if r["first_error"]})
    if first_errors:
        metrics["first_errors"] = first_errors[:3]
    return metrics


def _costs(results: list[dict[str, Any]], total_grants: int, run: _Run) -> dict[str, Any]:
    """Client CPU, client requests, server commands and server CPU per grant."""
    metrics: dict[str, Any] = {}
    cpu = sum(r.get("cpu_s", 0.0) for r in results)
    metrics["client_cpu_us_per_grant"] = cpu / total_grants * 1e6 if total_grants else math.nan
    requests = sum(r.get("requests", 0) for r in results)
    if requests:
        metrics["requests_per_grant"] = requests / total_grants if total_grants else math.nan
    if run.before or run.after:
        moved = delta(run.before, run.after)
        calls = sum(moved.values())
        metrics["commands"] = moved
        metrics["commands_per_grant"] = calls / total_grants if total_grants else math.nan
    metrics["server_cpu_us_per_grant"] = (
        run.server_cpu / total_grants * 1e6 if total_grants else math.nan
    )
    return metrics


# A round.


def _rotate(items: Sequence[T], by: int) -> list[T]:
    if not items:
        return []
    by %= len(items)
    return [*items[by:], *items[:by]]


def _uncontended_round(
    backend: Backend, target: Target, libs: list[Library], rnd: int, cfg: Config
) -> dict[str, Any]:
    """Each library's acquire + release, interleaved with the floor in the same child (an
    asyncio library: with the asyncio floor and the sync floor, in one running event loop)."""
    out: dict[str, Any] = {}
    floors: list[int] = []
    afloors: list[int] = []
    for lib in _rotate(libs, rnd):
        try:
            if lib.is_async:
                raw = call_in_child(
                    uncontended_async, lib, backend.floor, backend.afloor, target,
                    f"u-{rnd}-{lib.key}", cfg.iterations, 30.0, cfg.warmup, timeout=90,
                )  # fmt: skip
            else:
                raw = call_in_child(
                    uncontended, lib, backend.floor, target, f"u-{rnd}-{lib.key}",
                    cfg.iterations, 30.0, cfg.warmup, timeout=90,
                )  # fmt: skip
            floor = summarize(raw["floor"])
            if not lib.is_async:  # the "floor (all samples)" row stays the sync children's
                floors += raw["floor"]
            row: dict[str, Any] = summarize(raw["lock"])
            row["floor_p50_us"] = floor["p50_us"]
            row["floor_p99_us"] = floor["p99_us"]
            row["vs_floor_p50"] = row["p50_us"] / floor["p50_us"]
            row["vs_floor_p99"] = row["p99_us"] / floor["p99_us"]
            # Client CPU per operation, this library's and the floor's alongside.
            row["cpu_us"] = raw["lock_cpu"][0] / len(raw["lock"]) / 1000
            row["floor_cpu_us"] = raw["floor_cpu"][0] / len(raw["floor"]) / 1000
            if "afloor" in raw:  # the asyncio floor, timed in the same loop
                afloor = summarize(raw["afloor"])
                afloors += raw["afloor"]
                row["afloor_p50_us"] = afloor["p50_us"]
                row["afloor_p99_us"] = afloor["p99_us"]
                row["vs_afloor_p50"] = row["p50_us"] / afloor["p50_us"]
                row["vs_afloor_p99"] = row["p99_us"] / afloor["p99_us"]
                row["afloor_cpu_us"] = raw["afloor_cpu"][0] / len(raw["afloor"]) / 1000
        except ChildFailed as exc:
            row = {"error": str(exc)}
        out[lib.key] = row
        shown = (
            f"p50 {row['p50_us']:.0f} µs = {row['vs_floor_p50']:.2f}x floor "
            f"({row['floor_p50_us']:.0f} µs)"
            if "p50_us" in row
            else row["error"]
        )
        if "vs_afloor_p50" in row:
            shown += (
                f", {row['vs_afloor_p50']:.2f}x the asyncio floor ({row['afloor_p50_us']:.0f} µs)"
            )
        _progress(f"  uncontended {lib.label}: {shown}")
    out["floor"] = summarize(floors)
    if afloors:
        out["afloor"] = summarize(afloors)
    return out


def _contended_round(
    backend: Backend, target: Target, libs: list[Library], rnd: int, cfg: Config
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for lib in _rotate([lib for lib in libs if not lib.uncontended_only], rnd):
        counts = set(cfg.procs)
        if lib.is_tenure and backend.commandstats:
            counts |= set(cfg.command_procs)
        for procs in sorted(counts):
            name = f"c-{rnd}-{lib.key}-{procs}"
            try:
                row = contended(backend, target, lib, procs, name, cfg)
            except ChildFailed as exc:
                row = {"processes": procs, "error": str(exc)}
            out.setdefault(lib.key, {})[str(procs)] = row
            if "error" in row:
                _progress(f"  contended {lib.label} x{procs}: {row['error']}")
            else:
                _progress(
                    f"  contended {lib.label} x{procs}: {row['acq_per_s']:.0f}/s, handoff p50 "
                    f"{row['handoff_p50_us']:.0f} µs, fairness {row['fairness']:.2f}, "
                    f"overlaps {row['overlaps']}, timeouts {row['timeouts']}"
                )
    return out


def _primitives_setup(
    backend: Backend, target: Target, libs: list[PrimLibrary], cfg: Config
) -> dict[str, Any]:
    """Which roles work on this backend (one acquire + release each, in a child): a driver
    without the mode yet, or a peer without the primitive, is recorded as not supported."""
    roles = {
        lib.key: lib
        for s in scenarios(libs, cfg.primitive_procs, cfg.rw_readers, backend.commandstats)
        for lib in s.roles()
    }
    roles.update((lib.key, lib) for lib in uncontended_roles(libs))
    unsupported: dict[str, str] = {}
    failed: dict[str, str] = {}
    for key, lib in roles.items():
        try:
            why = call_in_child(probe, lib, target, f"probe-{key}", timeout=60)
        except ChildFailed as exc:
            failed[key] = str(exc)
            _progress(f"  {lib.label}: probe failed: {exc}")
            continue
        if why:
            unsupported[key] = why
            _progress(f"  {lib.label}: n/a (not supported): {why}")
    runs = scenarios(libs, cfg.primitive_procs, cfg.rw_readers, backend.commandstats)
    return {
        "libraries": {
            lib.key: {"label": lib.labels, "note": lib.note, "tenure": lib.is_tenure}
            for lib in libs
        },
        "roles": {key: lib.label for key, lib in roles.items()},
        "unsupported": unsupported,
        "failed": failed,
        "uncontended": [lib.key for lib in uncontended_roles(libs)],
        "scenarios": {s.key: s.describe() for s in runs},
    }


def _primitives_round(
    backend: Backend,
    target: Target,
    libs: list[PrimLibrary],
    prim: dict[str, Any],
    rnd: int,
    cfg: Config,
) -> dict[str, Any]:
    """Uncontended read / write / limit-1 permit, each interleaved with tenure's plain lock in
    the same child; then every scenario (rotated by round)."""
    skip = {**prim["failed"], **prim["unsupported"]}

    def not_run(keys: list[str]) -> dict[str, Any] | None:
        for key in keys:
            if key in prim["unsupported"]:
                return {"unsupported": prim["unsupported"][key]}
            if key in skip:
                return {"error": f"probe failed: {skip[key]}"}
        return None

    out: dict[str, Any] = {"uncontended": {}, "contended": {}}
    for lib in _rotate(uncontended_roles(libs), rnd):
        row = not_run([lib.key])
        if row is None:
            try:
                raw = call_in_child(
                    uncontended, lib, tenure_lock_floor, target, f"pu-{rnd}-{lib.key}",
                    cfg.iterations, 30.0, cfg.warmup, timeout=90,
                )  # fmt: skip
                row = summarize(raw["lock"])
                lock = summarize(raw["floor"])
                row["lock_p50_us"], row["lock_p99_us"] = lock["p50_us"], lock["p99_us"]
                row["vs_lock_p50"] = row["p50_us"] / lock["p50_us"]
                row["vs_lock_p99"] = row["p99_us"] / lock["p99_us"]
                row["cpu_us"] = raw["lock_cpu"][0] / len(raw["lock"]) / 1000
                row["lock_cpu_us"] = raw["floor_cpu"][0] / len(raw["floor"]) / 1000
            except ChildFailed as exc:
                row = {"error": str(exc)}
        out["uncontended"][lib.key] = row
        _progress(f"  uncontended {lib.label}: {_shown_uncontended(row)}")
    runs = scenarios(libs, cfg.primitive_procs, cfg.rw_readers, backend.commandstats)
    for scenario in _rotate(runs, rnd):
        name = f"p-{rnd}-{scenario.key.replace(' ', '-').replace('+', '-')}"
        row = not_run([lib.key for lib in scenario.roles()])
        if row is None:
            try:
                if scenario.one_holder:
                    row = contended(backend, target, scenario.roles()[0], scenario.procs, name, cfg)
                else:
                    row = contended_shared(backend, target, scenario, name, cfg)
            except ChildFailed as exc:
                row = {"error": str(exc)}
            unsupported = [e for e in row.get("first_errors", []) if is_unsupported(e)]
            if unsupported and not row.get("grants"):
                row = {"unsupported": unsupported[0]}
        out["contended"][scenario.key] = row
        _progress(f"  {scenario.key}: {_shown_contended(row)}")
    return out


def _shown_uncontended(row: dict[str, Any]) -> str:
    if "unsupported" in row:
        return f"n/a (not supported): {row['unsupported']}"
    if "error" in row:
        return str(row["error"])
    return (
        f"p50 {row['p50_us']:.0f} µs = {row['vs_lock_p50']:.2f}x tenure's lock "
        f"({row['lock_p50_us']:.0f} µs)"
    )


def _shown_contended(row: dict[str, Any]) -> str:
    if "unsupported" in row:
        return f"n/a (not supported): {row['unsupported']}"
    if "error" in row:
        return str(row["error"])
    text = f"{row['acq_per_s']:.0f}/s, overlaps {row['overlaps']}, timeouts {row['timeouts']}"
    if "write_wait_p50_us" in row:
        text += (
            f", writer {row['write_acq_per_s']:.0f}/s wait p50 {row['write_wait_p50_us']:.0f} "
            f"p99 {row['write_wait_p99_us']:.0f} µs"
        )
    if "max_inside" in row:
        text += f", most inside at once {row['max_inside']}"
    if row.get("first_errors"):
        text += f"; {row['first_errors'][0]}"
    return text


def run(cfg: Config) -> dict[str, Any]:
    t_start = time.monotonic()
    result: dict[str, Any] = {"config": cfg.describe(), "backends": {}}
    busy = busy_fraction(2.0)
    if busy > 0.15:
        _progress(
            f"warning: the CPUs were {busy:.0%} busy before the run started: another workload "
            "is running; the figures will be noisy"
        )
    with Spinners() as spinners:
        result["machine"] = machine_info(ROOT, DISTS)
        result["machine"]["busy_before_start"] = busy
        result["machine"]["spinners"] = spinners.describe()
        for backend_name in cfg.backends:
            backend = BACKENDS[backend_name]
            libs, skipped = [], {}
            for lib in backend.libraries if cfg.locks else ():
                if cfg.libraries is not None and lib.key not in cfg.libraries:
                    continue
                missing = lib.missing()
                if missing:
                    skipped[lib.key] = f"not installed: {', '.join(missing)}"
                    continue
                for module in lib.requires:  # import once, before forking workers
                    importlib.import_module(module)
                libs.append(lib)
            prim_libs: list[PrimLibrary] = []
            if cfg.primitives:
                for plib in primitive_libraries(backend.name, cfg.libraries):
                    missing = plib.library(next(iter(plib.labels))).missing()
                    if missing:
                        skipped[plib.key] = f"not installed: {', '.join(missing)}"
                    else:
                        prim_libs.append(plib)
            _progress(f"backend {backend.name}: starting")
            running = backend.start()
            pgids = {pid: _pgid(pid) for pid in running.pids}
            section: dict[str, Any] = {
                "floor_label": backend.floor_label,
                "afloor_label": backend.afloor_label,
                "wakeup": backend.wakeup,
                "info": {**running.info, "server_pgids": pgids},
                "libraries": {
                    lib.key: {
                        "label": lib.label,
                        "note": lib.note,
                        "tenure": lib.is_tenure,
                        "async": lib.is_async,
                        "twin": lib.twin,
                    }
                    for lib in libs
                },
                "skipped": skipped,
                "rounds": [],
            }
            result["backends"][backend.name] = section
            try:
                if prim_libs:
                    prim = _primitives_setup(backend, running.target, prim_libs, cfg)
                    section["primitives"] = prim
                for rnd in range(cfg.rounds):
                    _progress(f"backend {backend.name}: round {rnd + 1}/{cfg.rounds}")
                    one: dict[str, Any] = {}
                    if cfg.locks:
                        one["uncontended"] = _uncontended_round(
                            backend, running.target, libs, rnd, cfg
                        )
                        one["contended"] = _contended_round(backend, running.target, libs, rnd, cfg)
                    if cfg.locks and backend.renewal and any(lib.is_tenure for lib in libs):
                        one["renewal"] = _renewal_round(running.target, cfg)
                    if prim_libs:
                        one["primitives"] = _primitives_round(
                            backend, running.target, prim_libs, prim, rnd, cfg
                        )
                    section["rounds"].append(one)
            finally:
                running.close()
            section["summary"] = summarize_backend(section)
    result["elapsed_s"] = time.monotonic() - t_start
    result["targets"] = report.targets(result)
    return result


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def _renewal_round(target: Target, cfg: Config) -> dict[str, Any]:
    try:
        raw = call_in_child(renewal, target, cfg.renewal_locks, cfg.renewal_repeats, timeout=120)
    except ChildFailed as exc:
        return {"error": str(exc)}
    latency = summarize(raw.pop("samples_ns"))
    _progress(
        f"  renewal of {raw['locks']} locks: client requests {sorted(set(raw['round_trips']))}, "
        f"p50 {latency['p50_us']:.0f} µs"
    )
    evalsha = [c.get("evalsha", 0) + c.get("eval", 0) for c in raw["commands"]]
    return {
        **raw,
        "server_scripts_max": max(evalsha),
        "server_commands_max": max(sum(c.values()) for c in raw["commands"]),
        "latency_p50_us": latency["p50_us"],
        "latency_p99_us": latency["p99_us"],
        "round_trips_max": max(raw["round_trips"]),
        "round_trips_min": min(raw["round_trips"]),
    }


# Aggregation across rounds.


def summarize_backend(section: dict[str, Any]) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = section["rounds"]
    summary: dict[str, Any] = {}
    if "primitives" in section:
        summary["primitives"] = summarize_primitives(section["primitives"], rounds)
    if not any("uncontended" in r for r in rounds):
        return summary  # --primitives: no lock rows
    summary["floor"] = summarize_rounds([r["uncontended"]["floor"] for r in rounds])
    afloors = [r["uncontended"]["afloor"] for r in rounds if "afloor" in r["uncontended"]]
    if afloors:
        summary["afloor"] = summarize_rounds(afloors)
    unc: dict[str, Any] = {}
    con: dict[str, dict[str, Any]] = {}
    for key in section["libraries"]:
        per_round = [r["uncontended"].get(key, {}) for r in rounds]
        unc[key] = summarize_rounds([p for p in per_round if "error" not in p])
        errors = [p["error"] for p in per_round if "error" in p]
        if errors:
            unc[key]["errors"] = errors
        counts = sorted({int(n) for r in rounds for n in r["contended"].get(key, {})})
        for procs in counts:
            runs = [r["contended"].get(key, {}).get(str(procs), {}) for r in rounds]
            ok = [x for x in runs if "error" not in x and x]
            item: dict[str, Any] = summarize_rounds(ok)
            failed = [x["error"] for x in runs if "error" in x]
            if failed:
                item["failed_runs"] = failed
            extra = sorted({e for x in ok for e in x.get("first_errors", [])})
            if extra:
                item["first_errors"] = extra[:3]
            if ok and "commands" in ok[-1]:
                item["commands_last_round"] = ok[-1]["commands"]
                item["grants_last_round"] = ok[-1]["grants_total"]
            con.setdefault(key, {})[str(procs)] = item
    summary["uncontended"] = unc
    summary["contended"] = con
    summary["ratios"] = _ratios(section)
    summary["twins"] = _twin_ratios(section)
    renewals = [r["renewal"] for r in rounds if "renewal" in r and "error" not in r["renewal"]]
    if renewals:
        summary["renewal"] = summarize_rounds(renewals)
        summary["renewal"]["commands_last_round"] = renewals[-1]["commands"][-1]
    return summary


def _ratios(section: dict[str, Any]) -> dict[str, Any]:
    """Same-round ratios of tenure to each peer, then their median and spread."""
    tenure = next((k for k, v in section["libraries"].items() if v["tenure"]), None)
    if tenure is None:
        return {}
    out: dict[str, Any] = {}
    for key, lib in section["libraries"].items():
        if key == tenure or lib.get("twin"):  # an asyncio twin: see _twin_ratios
            continue
        per_procs: dict[str, Any] = {}
        for rnd in section["rounds"]:
            mine = rnd["contended"].get(tenure, {})
            theirs = rnd["contended"].get(key, {})
            for procs, row in theirs.items():
                own = mine.get(procs, {})
                if "acq_per_s" in own and row.get("acq_per_s"):
                    per_procs.setdefault(procs, []).append(
                        {
                            "throughput": own["acq_per_s"] / row["acq_per_s"],
                            "handoff_p50": own["handoff_p50_us"] / row["handoff_p50_us"]
                            if row.get("handoff_p50_us")
                            else math.nan,
                        }
                    )
        out[key] = {procs: summarize_rounds(rows) for procs, rows in per_procs.items()}
    return out


def _twin_ratios(section: dict[str, Any]) -> dict[str, Any]:
    """Per asyncio row: its acq/s / its sync twin's, same round, per process count."""
    out: dict[str, Any] = {}
    for key, lib in section["libraries"].items():
        twin = lib.get("twin")
        if not twin:
            continue
        per_procs: dict[str, list[dict[str, float]]] = {}
        for rnd in section["rounds"]:
            mine = rnd["contended"].get(key, {})
            theirs = rnd["contended"].get(twin, {})
            for procs, row in mine.items():
                other = theirs.get(procs, {})
                if "acq_per_s" in row and other.get("acq_per_s"):
                    per_procs.setdefault(procs, []).append(
                        {"throughput": row["acq_per_s"] / other["acq_per_s"]}
                    )
        out[key] = {procs: summarize_rounds(rows) for procs, rows in per_procs.items()}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    if not (ROOT / "tests" / "servers").is_dir():
        print("run from the tenure repository (tests/servers is needed)", file=sys.stderr)
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    cfg.out.mkdir(parents=True, exist_ok=True)
    stem = "latest" if cfg.locks else "primitives"  # latest.* only from runs with the lock rows
    json_path = cfg.out / f"{stem}.json"
    if cfg.from_json is not None:
        result = json.loads(cfg.from_json.read_text(), parse_constant=float)
        result = _restore_nan(result)
        for section in result["backends"].values():
            section["summary"] = summarize_backend(section)
        result["targets"] = report.targets(result)
    else:
        result = run(cfg)
    json_path.write_text(json.dumps(_clean(result), indent=1) + "\n")
    md_path = cfg.out / f"{stem}.md"
    md_path.write_text(report.markdown(result))
    written = [json_path, md_path]
    if cfg.chart and cfg.locks:
        png = report.chart(result, cfg.out / f"{stem}.png")
        if png is not None:
            written.append(png)
    print(md_path.read_text())
    _progress(f"done in {result['elapsed_s']:.0f} s: " + ", ".join(str(p) for p in written))
    missed = [t for t in result["targets"] if t["met"] is False]
    if missed:
        _progress(f"{len(missed)} target(s) missed (see the table); the run itself succeeded")
    return 0


def _restore_nan(value: Any) -> Any:
    """Inverse of :func:`_clean` for numbers: null inside summaries becomes NaN again."""
    if isinstance(value, dict):
        return {k: (math.nan if v is None else _restore_nan(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_nan(v) for v in value]
    return value


def _clean(value: Any) -> Any:
    """JSON-safe: NaN becomes null, tuples become lists, anything else unknown a string."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)
