"""Metrics through the OpenTelemetry API: the optional extra ``tenure[otel]``.

A client measures only if ``opentelemetry-api`` is installed and, when it is made, the
application has configured a meter provider (its SDK and exporter: OTLP, Prometheus...) or
passes one as ``meter_provider=``. Otherwise :func:`metrics_for` finds nothing for its driver and
the core's hooks (:func:`measured_acquire`, :func:`measured_release`, :func:`measured_loss`,
:meth:`Metrics.renewed`) cost one dictionary lookup each.

Instruments (meter ``tenure``; the attributes ``backend``, ``kind``, ``mode``, and ``name`` only
with ``metrics_names=True``, since names can be unbounded):

==================================  ===============  ==========================================
``tenure.lock.acquire.duration``    histogram, s     time in ``acquire`` (``outcome``: granted,
                                                     timeout, cancelled, error)
``tenure.lock.hold.duration``       histogram, s     from the grant to its release or loss
``tenure.lock.grants``              counter          grants
``tenure.lock.losses``              counter          losses (``reason``: expired, deleted,
                                                     connection, closed)
``tenure.lock.held``                up-down counter  grants held now
``tenure.lock.waiting``             up-down counter  callers waiting in ``acquire`` now
``tenure.election.leader``          up-down counter  elections led now (with names: 1/0 each)
``tenure.session.renewal.duration`` histogram, s     latency of a session's renewal
``tenure.session.renewal.failures`` counter          renewals that failed (retried or not)
==================================  ===============  ==========================================

Counts (grants, losses, held, waiting, leader) are plain integers read by the SDK at collection
(observable instruments), and the histograms' samples are handed to the SDK in batches (at each
collection, and every :data:`BATCH` samples): an SDK's ``record`` costs 10-25 microseconds, a
good part of a round trip to a local server, so the lock's own path only appends to an array.
Each lock resolves its attribute set once, when it is made (:func:`probe_for`).
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

__all__ = [
    "Metrics",
    "enable",
    "loss_reason",
    "measured_acquire",
    "measured_loss",
    "measured_release",
    "metrics_for",
    "probe_for",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Histogram samples kept before they are handed to the SDK (also at every collection).
BATCH: Final = 1000

#: Drivers' metrics by ``id(driver)`` (an entry leaves with its driver): a plain dict, whose
#: lookup is cheaper than a WeakKeyDictionary's on the lock's path.
_BY_DRIVER: dict[int, Metrics] = {}

#: Histogram buckets (seconds) for waits, holds and renewals: 1 ms to 1 h.
_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
)  # fmt: skip


def metrics_for(driver: object) -> Metrics | None:
    """The metrics of the client that made ``driver``, or None (nothing is measured)."""
    if not _BY_DRIVER:
        return None
    return _BY_DRIVER.get(id(driver))


def enable(driver: object, backend: str, *, names: bool, meter_provider: Any) -> Metrics | None:
    """Measure the locks made through ``driver`` if a meter provider is there (passed, or set
    globally by the application's SDK); None if not, or if opentelemetry-api is not installed."""
    try:
        from opentelemetry import metrics as otel  # noqa: PLC0415  # the optional extra
    except ImportError:
        return None
    provider = meter_provider
    if provider is None:
        provider = otel.get_meter_provider()
        # The API's own stand-ins until (unless) an SDK is configured: nothing to measure.
        if type(provider).__name__ in ("_ProxyMeterProvider", "NoOpMeterProvider"):
            return None
    from . import __version__  # noqa: PLC0415  # (tenure/__init__ imports this module's users)

    found = _BY_DRIVER[id(driver)] = Metrics(
        provider.get_meter("tenure", __version__), backend, names
    )
    weakref.finalize(driver, _BY_DRIVER.pop, id(driver), None)
    return found


class Series:
    """One attribute set (backend, kind, mode[, name]): its counts and its samples not yet
    handed to the SDK (arrays of floats, which leave nothing for the garbage collector)."""

    __slots__ = (
        "attributes",
        "granted",
        "grants",
        "held",
        "holds",
        "kind",
        "leader",
        "losses",
        "outcomes",
        "waited",
        "waiting",
    )

    def __init__(self, attributes: dict[str, str], kind: str) -> None:
        self.attributes = attributes
        self.kind = kind
        self.grants = 0
        self.held = 0
        self.waiting = 0
        self.leader = 0
        self.losses: dict[str, int] = {}
        #: The attribute set of each acquire outcome (granted, timeout, cancelled, error).
        self.outcomes = {
            outcome: {**attributes, "outcome": outcome}
            for outcome in ("granted", "timeout", "cancelled", "error")
        }
        self.granted: array[float] = array("d")  # waits that ended in a grant
        self.waited: list[tuple[str, float]] = []  # waits that did not (outcome, seconds)
        self.holds: array[float] = array("d")


class Probe:
    """A lock's handle on its series: what the hooks on its path touch (see the decorators)."""

    __slots__ = ("metrics", "mutex", "series")

    def __init__(self, metrics: Metrics, series: Series) -> None:
        self.metrics = metrics
        self.series = series
        self.mutex = metrics._mutex

    def enter(self) -> float:
        """A caller starts waiting in ``acquire``: the time it started."""
        with self.mutex:
            self.series.waiting += 1
        return time.perf_counter()

    def left(self, lock: Any, before: object, got: bool, started: float) -> None:
        """``acquire`` returned ``got``; a new grant (not a reentrant count) is measured."""
        now = time.perf_counter()
        grant = lock._grant
        series = self.series
        metrics = self.metrics
        with self.mutex:
            series.waiting -= 1
            if got and grant is not None and grant is not before:
                series.granted.append(now - started)
                series.grants += 1
                series.held += 1
                if series.kind == "election":
                    series.leader += 1
                lock._measured = (grant, now)
            elif not got:
                series.waited.append(("timeout", now - started))
            full = metrics._kept()
        if full:
            metrics.flush()

    def failed(self, started: float, exc: BaseException) -> None:
        """``acquire`` raised ``exc``."""
        cancelled = isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "CancelledError"
        waited = time.perf_counter() - started
        with self.mutex:
            self.series.waiting -= 1
            self.series.waited.append(("cancelled" if cancelled else "error", waited))
            full = self.metrics._kept()
        if full:
            self.metrics.flush()

    def ended(self, lock: Any, grant: object, reason: str | None) -> None:
        """``grant`` was released (``reason`` None) or lost; counted once, whichever is first."""
        now = time.perf_counter()
        series = self.series
        metrics = self.metrics
        with self.mutex:
            measured = lock._measured
            if measured is None or measured[0] is not grant:
                return
            lock._measured = None
            series.held -= 1
            if series.kind == "election":
                series.leader -= 1
            if reason is not None:
                series.losses[reason] = series.losses.get(reason, 0) + 1
            series.holds.append(now - measured[1])
            full = metrics._kept()
        if full:
            metrics.flush()


class Metrics:
    """The instruments of one client (see the module docstring)."""

    def __init__(self, meter: Any, backend: str, names: bool) -> None:
        self.backend = backend
        self.names = names
        self._mutex = threading.Lock()  # the counts are changed from threads (sync flavour)
        self._series: dict[tuple[str, str, str], Series] = {}
        self._renewal_failures = 0
        self._renewal_attributes = {"backend": backend}
        self._renewals: array[float] = array("d")
        self._count = 0  # samples not yet handed to the SDK
        self.acquire_duration = meter.create_histogram(
            "tenure.lock.acquire.duration",
            unit="s",
            description="Time spent in acquire, by outcome (granted, timeout, cancelled, error)",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        self.hold_duration = meter.create_histogram(
            "tenure.lock.hold.duration",
            unit="s",
            description="Time from a grant to its release or loss",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        self.renewal_duration = meter.create_histogram(
            "tenure.session.renewal.duration",
            unit="s",
            description="Latency of a session's renewal (one round trip for all its locks)",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        otel_observation = _observation_class()
        counts: list[tuple[str, str, str, Callable[[Series], Iterable[tuple[int, dict[str, str]]]]]]
        counts = [
            ("tenure.lock.grants", "{grant}", "Grants", lambda s: [(s.grants, s.attributes)]),
            (
                "tenure.lock.losses",
                "{loss}",
                "Grants lost, by reason (expired, deleted, connection, closed)",
                lambda s: [(n, {**s.attributes, "reason": r}) for r, n in s.losses.items()],
            ),
        ]
        for name, unit, description, values in counts:
            meter.create_observable_counter(
                name,
                callbacks=[self._callback(values, otel_observation)],
                unit=unit,
                description=description,
            )
        gauges: list[tuple[str, str, str, Callable[[Series], Iterable[tuple[int, Any]]]]] = [
            ("tenure.lock.held", "{grant}", "Grants held now", lambda s: [(s.held, s.attributes)]),
            (
                "tenure.lock.waiting",
                "{caller}",
                "Callers waiting in acquire now",
                lambda s: [(s.waiting, s.attributes)],
            ),
            (
                "tenure.election.leader",
                "{election}",
                "Elections led now (1/0 per election with metrics_names=True)",
                lambda s: [(s.leader, s.attributes)] if s.kind == "election" else [],
            ),
        ]
        for name, unit, description, values in gauges:
            meter.create_observable_up_down_counter(
                name,
                callbacks=[self._callback(values, otel_observation)],
                unit=unit,
                description=description,
            )
        meter.create_observable_counter(
            "tenure.session.renewal.failures",
            callbacks=[
                lambda _options: [
                    otel_observation(self._renewal_failures, self._renewal_attributes)
                ]
            ],
            unit="{renewal}",
            description="Session renewals that failed (each retry counts)",
        )

    def _callback(
        self, values: Callable[[Series], Iterable[tuple[int, dict[str, str]]]], observation: Any
    ) -> Callable[[Any], list[Any]]:
        def observe(_options: Any) -> list[Any]:
            self.flush()  # (the SDK collects after the callbacks: these samples count now)
            with self._mutex:
                series = list(self._series.values())
                return [observation(n, attrs) for s in series for n, attrs in values(s)]

        return observe

    def probe(self, kind: str, mode: str, name: str) -> Probe:
        """The hooks' handle for a lock of this ``kind``, ``mode`` and ``name``."""
        key = (kind, mode, name if self.names else "")
        with self._mutex:
            found = self._series.get(key)
            if found is None:
                attributes = {"backend": self.backend, "kind": kind, "mode": mode}
                if self.names:
                    attributes["name"] = name
                found = self._series[key] = Series(attributes, kind)
        return Probe(self, found)

    def _kept(self) -> bool:
        """Count a sample just kept (holding ``_mutex``); True when a batch is full."""
        self._count += 1
        return self._count >= BATCH

    def flush(self) -> None:
        """Hand the pending histogram samples to the SDK."""
        batches: list[tuple[Any, dict[str, str], Iterable[float]]] = []
        with self._mutex:
            if not self._count:
                return
            self._count = 0
            for series in self._series.values():
                if series.granted:
                    batches.append(
                        (self.acquire_duration, series.outcomes["granted"], series.granted)
                    )
                    series.granted = array("d")
                for outcome, seconds in series.waited:
                    batches.append((self.acquire_duration, series.outcomes[outcome], (seconds,)))
                series.waited = []
                if series.holds:
                    batches.append((self.hold_duration, series.attributes, series.holds))
                    series.holds = array("d")
            if self._renewals:
                batches.append((self.renewal_duration, self._renewal_attributes, self._renewals))
                self._renewals = array("d")
        for histogram, attributes, values in batches:
            for value in values:
                histogram.record(value, attributes)

    def renewed(self, seconds: float | None) -> None:
        """A renewal took ``seconds``; None: it failed."""
        with self._mutex:
            if seconds is None:
                self._renewal_failures += 1
                return
            self._renewals.append(seconds)
            full = self._kept()
        if full:
            self.flush()


def _observation_class() -> Any:
    from opentelemetry.metrics import Observation  # noqa: PLC0415  # the optional extra

    return Observation


def loss_reason(reason: str) -> str:
    """A loss's free-text reason as the ``reason`` attribute: expired, deleted, connection,
    closed."""
    if "closed" in reason and "session" in reason:
        return "closed"
    if "deleted" in reason or "taken" in reason:
        return "deleted"
    if "connection" in reason or "authentication" in reason:
        return "connection"
    return "expired"


# Decorators for the lock's methods: one implementation for both flavours (the sync lock's
# methods are plain functions, the asyncio lock's coroutine functions).


def probe_for(driver: object, kind: str, mode: str, name: str) -> Probe | None:
    """The hooks' handle for a new lock on ``driver`` (None: nothing is measured)."""
    metrics = metrics_for(driver)
    return None if metrics is None else metrics.probe(kind, mode, name)


def measured_acquire(acquire: F) -> F:
    """Measure ``Lock.acquire``: the wait and its outcome, a new grant, the waiting count."""

    if inspect.iscoroutinefunction(acquire):

        @functools.wraps(acquire)
        async def measured_async(self: Any, *args: Any, **kwargs: Any) -> bool:
            probe = self._probe
            if probe is None:
                return bool(await acquire(self, *args, **kwargs))
            before = self._grant
            started = probe.enter()
            try:
                got = bool(await acquire(self, *args, **kwargs))
            except BaseException as exc:
                probe.failed(started, exc)
                raise
            probe.left(self, before, got, started)
            return got

        return measured_async  # type: ignore[return-value]

    @functools.wraps(acquire)
    def measured(self: Any, *args: Any, **kwargs: Any) -> bool:
        probe = self._probe
        if probe is None:
            return bool(acquire(self, *args, **kwargs))
        before = self._grant
        started = probe.enter()
        try:
            got = bool(acquire(self, *args, **kwargs))
        except BaseException as exc:
            probe.failed(started, exc)
            raise
        probe.left(self, before, got, started)
        return got

    return measured  # type: ignore[return-value]


def measured_release(release: F) -> F:
    """Measure ``Lock.release``: the hold time of a grant that ended (not a reentrant count);
    found deleted or taken at release, a loss (one lost earlier was counted then)."""

    def reason(exc: BaseException) -> str | None:
        return loss_reason(str(exc)) if type(exc).__name__ == "LockLostError" else None

    if inspect.iscoroutinefunction(release):

        @functools.wraps(release)
        async def measured_async(self: Any) -> None:
            probe = self._probe
            grant = self._grant
            if probe is None or grant is None:
                await release(self)
                return
            try:
                await release(self)
            except BaseException as exc:
                if self._grant is not grant:
                    probe.ended(self, grant, reason(exc))
                raise
            if self._grant is not grant:
                probe.ended(self, grant, None)

        return measured_async  # type: ignore[return-value]

    @functools.wraps(release)
    def measured(self: Any) -> None:
        probe = self._probe
        grant = self._grant
        if probe is None or grant is None:
            release(self)
            return
        try:
            release(self)
        except BaseException as exc:
            if self._grant is not grant:
                probe.ended(self, grant, reason(exc))
            raise
        if self._grant is not grant:
            probe.ended(self, grant, None)

    return measured  # type: ignore[return-value]


def measured_loss(set_lost: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
    """Count ``Lock._set_lost``: a loss by reason (the first report of the grant's end wins)."""

    @functools.wraps(set_lost)
    def measured(self: Any, reason: str) -> None:
        grant = self._grant
        probe = self._probe
        if probe is not None and grant is not None:  # (before ``lost`` is set: whoever waits
            probe.ended(self, grant, loss_reason(reason))  # for it sees the count)
        set_lost(self, reason)

    return measured
