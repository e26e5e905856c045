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
collection, and every :data:`BATCH` samples): an SDK's ``record`` costs tens of microseconds, a
good part of a round trip to a local server, so the lock's own path only appends to an array.
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
    """One attribute set (backend, kind, mode[, name]) and its counts."""

    __slots__ = ("attributes", "grants", "held", "kind", "leader", "losses", "waiting")

    def __init__(self, attributes: dict[str, str], kind: str) -> None:
        self.attributes = attributes
        self.kind = kind
        self.grants = 0
        self.held = 0
        self.waiting = 0
        self.leader = 0
        self.losses: dict[str, int] = {}


class Metrics:
    """The instruments of one client (see the module docstring)."""

    def __init__(self, meter: Any, backend: str, names: bool) -> None:
        self.backend = backend
        self.names = names
        self._mutex = threading.Lock()  # the counts are changed from threads (sync flavour)
        self._series: dict[tuple[str, str, str], Series] = {}
        self._outcomes: dict[tuple[Series, str], dict[str, str]] = {}
        # Held grants (until released or lost, which every grant is in the end, if only when
        # its session closes): the series and the time of the grant.
        self._held: dict[Any, tuple[Series, float]] = {}
        self._renewal_failures = 0
        self._renewal_attributes = {"backend": backend}
        # Samples not yet handed to the SDK, per (histogram, attribute set): arrays of floats,
        # which leave nothing for the garbage collector to follow.
        self._pending: dict[tuple[int, int], tuple[Any, dict[str, str], array[float]]] = {}
        self._count = 0
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

    def series(self, kind: str, mode: str, name: str) -> Series:
        key = (kind, mode, name if self.names else "")
        found = self._series.get(key)
        if found is None:
            attributes = {"backend": self.backend, "kind": kind, "mode": mode}
            if self.names:
                attributes["name"] = name
            with self._mutex:
                found = self._series.setdefault(key, Series(attributes, kind))
        return found

    def outcome(self, series: Series, outcome: str) -> dict[str, str]:
        found = self._outcomes.get((series, outcome))
        if found is None:
            found = self._outcomes[series, outcome] = {**series.attributes, "outcome": outcome}
        return found

    def _record(self, histogram: Any, value: float, attributes: dict[str, str]) -> None:
        with self._mutex:
            full = self._keep(histogram, value, attributes)
        if full:
            self.flush()

    def _keep(self, histogram: Any, value: float, attributes: dict[str, str]) -> bool:
        """Keep a sample (holding ``_mutex``); True when a batch is full."""
        found = self._pending.get((id(histogram), id(attributes)))
        if found is None:  # (the attribute dicts are cached: one per series and outcome)
            found = self._pending[id(histogram), id(attributes)] = (
                histogram,
                attributes,
                array("d"),
            )
        found[2].append(value)
        self._count += 1
        return self._count >= BATCH

    def flush(self) -> None:
        """Hand the pending histogram samples to the SDK."""
        with self._mutex:
            pending, self._pending, self._count = self._pending, {}, 0
        for histogram, attributes, values in pending.values():
            for value in values:
                histogram.record(value, attributes)

    # The hooks.

    def waiting(self, series: Series, change: int) -> None:
        with self._mutex:
            series.waiting += change

    def granted(self, series: Series, grant: object, waited: float, now: float) -> None:
        """A new grant after ``waited`` seconds in ``acquire`` (which no longer waits)."""
        attributes = self.outcome(series, "granted")
        with self._mutex:
            full = self._keep(self.acquire_duration, waited, attributes)
            series.waiting -= 1
            series.grants += 1
            series.held += 1
            if series.kind == "election":
                series.leader += 1
            self._held[grant] = (series, now)
        if full:
            self.flush()

    def not_granted(self, series: Series, outcome: str, waited: float) -> None:
        self._record(self.acquire_duration, waited, self.outcome(series, outcome))

    def ended(self, grant: object, reason: str | None) -> None:
        """``grant`` was released (``reason`` None) or lost; counted once, whichever is first."""
        with self._mutex:
            found = self._held.pop(grant, None)
            if found is None:
                return
            series, since = found
            series.held -= 1
            if series.kind == "election":
                series.leader -= 1
            if reason is not None:
                series.losses[reason] = series.losses.get(reason, 0) + 1
            full = self._keep(self.hold_duration, time.perf_counter() - since, series.attributes)
        if full:
            self.flush()

    def renewed(self, seconds: float | None) -> None:
        """A renewal took ``seconds``; None: it failed."""
        if seconds is None:
            with self._mutex:
                self._renewal_failures += 1
        else:
            self._record(self.renewal_duration, seconds, self._renewal_attributes)


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


def measured_acquire(acquire: F) -> F:
    """Measure ``Lock.acquire``: the wait and its outcome, a new grant, the waiting count."""

    def start(lock: Any) -> tuple[Metrics, Series, Any, float] | None:
        metrics = metrics_for(lock._driver)
        if metrics is None:
            return None
        cached = lock.__dict__.get("_metrics_series")  # (a lock's series never changes)
        if cached is not None and cached[0] is metrics:
            series = cached[1]
        else:
            series = metrics.series(lock._kind, lock._mode.name, lock.name)
            lock.__dict__["_metrics_series"] = (metrics, series)
        metrics.waiting(series, 1)
        return metrics, series, lock._grant, time.perf_counter()

    def finish(lock: Any, begun: tuple[Metrics, Series, Any, float], got: bool) -> None:
        metrics, series, before, started = begun
        now = time.perf_counter()
        if got and lock._grant is not None and lock._grant is not before:
            metrics.granted(series, lock._grant, now - started, now)
            return
        metrics.waiting(series, -1)
        if not got:
            metrics.not_granted(series, "timeout", now - started)

    def failed(begun: tuple[Metrics, Series, Any, float], exc: BaseException) -> None:
        metrics, series, _, started = begun
        metrics.waiting(series, -1)
        cancelled = isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "CancelledError"
        outcome = "cancelled" if cancelled else "error"
        metrics.not_granted(series, outcome, time.perf_counter() - started)

    if inspect.iscoroutinefunction(acquire):

        @functools.wraps(acquire)
        async def measured_async(self: Any, *args: Any, **kwargs: Any) -> bool:
            begun = start(self)
            if begun is None:
                return bool(await acquire(self, *args, **kwargs))
            try:
                got = bool(await acquire(self, *args, **kwargs))
            except BaseException as exc:
                failed(begun, exc)
                raise
            finish(self, begun, got)
            return got

        return measured_async  # type: ignore[return-value]

    @functools.wraps(acquire)
    def measured(self: Any, *args: Any, **kwargs: Any) -> bool:
        begun = start(self)
        if begun is None:
            return bool(acquire(self, *args, **kwargs))
        try:
            got = bool(acquire(self, *args, **kwargs))
        except BaseException as exc:
            failed(begun, exc)
            raise
        finish(self, begun, got)
        return got

    return measured  # type: ignore[return-value]


def measured_release(release: F) -> F:
    """Measure ``Lock.release``: the hold time of a grant that ended (not a reentrant count)."""

    def end(lock: Any, grant: Any, exc: BaseException | None) -> None:
        if grant is not None and lock._grant is not grant:
            metrics = metrics_for(lock._driver)
            if metrics is not None:
                # Found deleted or taken at release: a loss (one lost earlier was counted then).
                lost = type(exc).__name__ == "LockLostError"
                metrics.ended(grant, loss_reason(str(exc)) if lost else None)

    if inspect.iscoroutinefunction(release):

        @functools.wraps(release)
        async def measured_async(self: Any) -> None:
            grant = self._grant
            try:
                await release(self)
            except BaseException as exc:
                end(self, grant, exc)
                raise
            end(self, grant, None)

        return measured_async  # type: ignore[return-value]

    @functools.wraps(release)
    def measured(self: Any) -> None:
        grant = self._grant
        try:
            release(self)
        except BaseException as exc:
            end(self, grant, exc)
            raise
        end(self, grant, None)

    return measured  # type: ignore[return-value]


def measured_loss(set_lost: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
    """Count ``Lock._set_lost``: a loss by reason (the first report of the grant's end wins)."""

    @functools.wraps(set_lost)
    def measured(self: Any, reason: str) -> None:
        grant = self._grant
        if grant is not None:  # (before ``lost`` is set: whoever waits for it sees the count)
            metrics = metrics_for(self._driver)
            if metrics is not None:
                metrics.ended(grant, loss_reason(reason))
        set_lost(self, reason)

    return measured
