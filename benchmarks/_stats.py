"""Percentiles and per-round aggregation (median and spread)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["percentile", "summarize", "summarize_rounds"]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def summarize(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p99/mean in microseconds of samples in nanoseconds."""
    us = [s / 1000 for s in samples_ns]
    return {
        "n": len(us),
        "p50_us": percentile(us, 50),
        "p99_us": percentile(us, 99),
        "mean_us": statistics.fmean(us) if us else math.nan,
    }


def summarize_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """For every numeric key of the per-round dicts: median, min and max across rounds."""
    keys: list[str] = []
    for item in rounds:
        for key, value in item.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in keys:
                keys.append(key)
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [float(r[key]) for r in rounds if isinstance(r.get(key), int | float)]
        values = [v for v in values if not math.isnan(v)]
        if values:
            out[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    return out
