"""The cost of OpenTelemetry metrics: uncontended acquire+release with metrics and an SDK vs
without, in the same run (``python -m benchmarks.metrics [--backends file,redis]``).

Per backend one server; two clients in this process, one with a ``MeterProvider`` (the SDK,
with an in-memory reader: recording costs the same whatever the exporter, which runs at
collection) and ``metrics_names=True`` (the costlier attribute sets), one without. Each round
measures ``--iterations`` acquire+release on each, the two taking turns every 50 (so both see
the same background load), after a warm-up; the report gives each round's p50s, their medians
over the rounds, and the ratio (the budget's measure), then the same for the means, which
include the SDK's own ``record`` of each sample (batched, in this process). SCHED_IDLE spinners
keep every vCPU busy (BENCHMARKING.md). Budget: 1.1x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks._env import Spinners

BUDGET = 1.1


#: Both clients take turns every this many operations, so both see the same background load.
SLICE = 50


def _samples(lock: Any, count: int, into: list[int]) -> None:
    for _ in range(count):
        started = time.perf_counter_ns()
        lock.acquire()
        lock.release()
        into.append(time.perf_counter_ns() - started)


def _round(plain: Any, measured: Any, iterations: int, flip: bool) -> tuple[list[int], list[int]]:
    """``iterations`` acquire+release (ns) on each client, interleaved in slices."""
    off: list[int] = []
    on: list[int] = []
    locks = [(plain.lock("bench-off"), off), (measured.lock("bench-on"), on)]
    for n in range(iterations // SLICE):
        for lock, into in locks if (n % 2 == 0) != flip else locks[::-1]:
            _samples(lock, SLICE, into)
    return off, on


def measure(url: str, rounds: int, iterations: int) -> dict[str, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    import tenure

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    plain = tenure.connect(url)
    measured = tenure.connect(url, meter_provider=provider, metrics_names=True)
    try:
        _round(plain, measured, max(2 * SLICE, iterations // 10), flip=False)  # warm-up
        off: list[float] = []
        on: list[float] = []
        means: list[tuple[float, float]] = []
        for n in range(rounds):
            a, b = _round(plain, measured, iterations, flip=n % 2 == 1)
            off.append(statistics.median(a) / 1000.0)
            on.append(statistics.median(b) / 1000.0)
            means.append((statistics.fmean(a) / 1000.0, statistics.fmean(b) / 1000.0))
        data = reader.get_metrics_data()
        recorded = sum(
            1
            for r in (data.resource_metrics if data else [])
            for s in r.scope_metrics
            for m in s.metrics
            if m.name == "tenure.lock.acquire.duration"
        )
        assert recorded, "the measured client recorded nothing"
    finally:
        measured.close()
        plain.close()
        provider.shutdown()
    return {
        "off_p50_us": off,
        "on_p50_us": on,
        "off": statistics.median(off),
        "on": statistics.median(on),
        "ratio": statistics.median(on) / statistics.median(off),
        # The mean includes the SDK's own ``record`` (batched, but in this process).
        "off_mean": statistics.median(m[0] for m in means),
        "on_mean": statistics.median(m[1] for m in means),
    }


def _servers() -> dict[str, Callable[[], tuple[str, Callable[[], None]]]]:
    import tempfile

    def file() -> tuple[str, Callable[[], None]]:
        tmp = tempfile.TemporaryDirectory(prefix="tenure-bench-metrics-")
        return f"file://{tmp.name}", tmp.cleanup

    def redis() -> tuple[str, Callable[[], None]]:
        from tests.servers import start_redis

        server = start_redis()
        return server.url, server.close

    def postgres() -> tuple[str, Callable[[], None]]:
        from tests.servers import start_postgres

        server = start_postgres()
        return server.url, server.close

    def etcd() -> tuple[str, Callable[[], None]]:
        from tests.servers import start_etcd_cluster

        cluster = start_etcd_cluster(1)
        return cluster.url, cluster.close

    return {"file": file, "redis": redis, "postgres": postgres, "etcd": etcd}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics")
    parser.add_argument("--backends", default="file,redis")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args(argv)
    servers = _servers()
    worst = 0.0
    with Spinners(max_seconds=1800.0):
        for backend in args.backends.split(","):
            url, close = servers[backend]()
            try:
                result = measure(url, args.rounds, args.iterations)
            finally:
                close()
            worst = max(worst, result["ratio"])
            rounds = ", ".join(
                f"{a:.1f}/{b:.1f}"
                for a, b in zip(result["off_p50_us"], result["on_p50_us"], strict=True)
            )
            print(
                f"{backend:9s} acquire+release p50: metrics off {result['off']:.1f} µs, "
                f"on (SDK) {result['on']:.1f} µs, ratio {result['ratio']:.3f} "
                f"(rounds off/on: {rounds}); mean {result['off_mean']:.1f} / "
                f"{result['on_mean']:.1f} µs, ratio {result['on_mean'] / result['off_mean']:.3f}"
            )
    print(f"worst ratio {worst:.3f} (budget {BUDGET})")
    return 0 if worst <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
