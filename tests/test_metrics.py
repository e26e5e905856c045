"""OpenTelemetry metrics, read through the SDK's in-memory reader, on real servers.

Every wait is bounded by a deadline; nothing stands in for a server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import tenure
from tenure import aio
from tests.contract.backends import Backend, make_backend

TIMEOUT = 20.0


@pytest.fixture(params=["file", "redis", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, request, tmp_path)


@pytest.fixture
def redis(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend("redis", request, tmp_path)


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    found = InMemoryMetricReader()
    yield found
    found.shutdown()


def points(reader: InMemoryMetricReader) -> list[tuple[str, dict[str, Any], Any]]:
    """Every data point now: (instrument, attributes, point)."""
    found = []
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found.append((metric.name, dict(point.attributes or {}), point))
    return found


def value(reader: InMemoryMetricReader, instrument: str, /, **attributes: str) -> float:
    """The sum (counters) or count (histograms) of the points of ``instrument`` whose attributes
    include ``attributes`` (0 if none)."""
    total = 0.0
    for metric, attrs, point in points(reader):
        if metric == instrument and attributes.items() <= attrs.items():
            total += point.count if hasattr(point, "count") else point.value
    return total


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def connect(backend: Backend, reader: InMemoryMetricReader, **options: Any) -> tenure.Client:
    return tenure.connect(
        backend.url, meter_provider=MeterProvider(metric_readers=[reader]), **options
    )


def test_grant_hold_and_release_are_measured(
    backend: Backend, reader: InMemoryMetricReader
) -> None:
    with connect(backend, reader) as client:
        lock = client.lock("jobs/a")
        attrs = {"backend": backend.url.split(":")[0], "kind": "lock", "mode": "exclusive"}
        assert lock.acquire(timeout=10)
        assert value(reader, "tenure.lock.held", **attrs) == 1
        assert value(reader, "tenure.lock.grants", **attrs) == 1
        assert value(reader, "tenure.lock.acquire.duration", outcome="granted", **attrs) == 1
        time.sleep(0.05)
        lock.release()
        assert value(reader, "tenure.lock.held", **attrs) == 0
        assert value(reader, "tenure.lock.hold.duration", **attrs) == 1
        hold = next(p for m, _, p in points(reader) if m == "tenure.lock.hold.duration")
        assert hold.sum >= 0.05
        # No name unless asked: names can be unbounded.
        assert all("name" not in a for _, a, _ in points(reader))


def test_timeout_and_waiting_are_measured(backend: Backend, reader: InMemoryMetricReader) -> None:
    with connect(backend, reader, metrics_names=True) as client:
        holder = client.lock("busy")
        assert holder.acquire(timeout=10)
        assert not client.lock("busy").acquire(timeout=0)
        assert value(reader, "tenure.lock.acquire.duration", name="busy", outcome="timeout") == 1
        waiter = client.lock("busy")
        got: list[bool] = []
        thread = threading.Thread(target=lambda: got.append(waiter.acquire(timeout=TIMEOUT)))
        thread.start()
        wait_until(lambda: value(reader, "tenure.lock.waiting", name="busy") == 1, "a waiter")
        holder.release()
        thread.join(TIMEOUT)
        assert got == [True]
        assert value(reader, "tenure.lock.waiting", name="busy") == 0
        assert value(reader, "tenure.lock.grants", name="busy") == 2
        waiter.release()


def test_cancelled_wait_is_measured(backend: Backend, reader: InMemoryMetricReader) -> None:
    provider = MeterProvider(metric_readers=[reader])

    async def scenario() -> None:
        async with aio.connect(backend.url, meter_provider=provider) as client:
            holder = client.lock("c")
            assert await holder.acquire(timeout=10)
            task = asyncio.ensure_future(client.lock("c").acquire(timeout=TIMEOUT))
            deadline = time.monotonic() + TIMEOUT
            while value(reader, "tenure.lock.waiting") < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await holder.release()

    asyncio.run(scenario())
    assert value(reader, "tenure.lock.acquire.duration", outcome="cancelled") == 1
    assert value(reader, "tenure.lock.waiting") == 0


def test_loss_is_counted_by_reason(redis: Backend, reader: InMemoryMetricReader) -> None:
    with connect(redis, reader, ttl=1.0) as client:
        lock = client.lock("stolen")
        assert lock.acquire(timeout=10)
        redis.steal("stolen")
        assert lock.lost.wait(TIMEOUT)
        assert value(reader, "tenure.lock.losses", reason="deleted") == 1
        assert value(reader, "tenure.lock.held") == 0
        with pytest.raises(tenure.LockLostError):
            lock.release()
        assert value(reader, "tenure.lock.losses") == 1  # counted once
        assert value(reader, "tenure.lock.hold.duration") == 1
        # Renewals (every ttl/3) were measured on the way.
        assert value(reader, "tenure.session.renewal.duration", backend="redis") >= 1


def test_renewal_failures_are_counted(reader: InMemoryMetricReader, redis_proxy: Any) -> None:
    url = redis_proxy.url_for("redis") + "?socket_timeout=0.3&connect_timeout=0.3"
    provider = MeterProvider(metric_readers=[reader])
    with tenure.connect(url, ttl=1.0, meter_provider=provider) as client:
        lock = client.lock("r")
        assert lock.acquire(timeout=10)
        redis_proxy.blackhole()  # the server is out of reach: renewals fail until lost
        assert lock.lost.wait(TIMEOUT)
        assert value(reader, "tenure.session.renewal.failures") >= 1
        assert value(reader, "tenure.lock.losses", reason="expired") == 1
        redis_proxy.heal()


def test_leadership_is_one_then_zero(backend: Backend, reader: InMemoryMetricReader) -> None:
    with connect(backend, reader, metrics_names=True) as client:
        election = client.election("primary", value="a")
        assert election.campaign(timeout=10)
        assert value(reader, "tenure.election.leader", name="primary") == 1
        election.resign()
        assert value(reader, "tenure.election.leader", name="primary") == 0
        assert value(reader, "tenure.lock.grants", kind="election") == 1


def test_rwlock_and_semaphore_modes(backend: Backend, reader: InMemoryMetricReader) -> None:
    with connect(backend, reader) as client:
        rw = client.rwlock("catalog")
        sem = client.semaphore("gpu", limit=2)
        with rw.read, sem:
            assert value(reader, "tenure.lock.held", kind="rwlock", mode="shared") == 1
            assert value(reader, "tenure.lock.held", kind="semaphore", mode="permit") == 1
        assert value(reader, "tenure.lock.held") == 0


def test_nothing_is_measured_without_a_provider(backend: Backend) -> None:
    from opentelemetry import metrics as otel

    from tenure._metrics import metrics_for

    # No SDK configured globally in this test process: the API's stand-in provider.
    assert type(otel.get_meter_provider()).__name__ in ("_ProxyMeterProvider", "NoOpMeterProvider")
    with tenure.connect(backend.url) as client:
        assert metrics_for(client._driver) is None
        with client.lock("x"):
            pass
