"""Pure computations over samples: medians, percentiles, sliding windows. No I/O, so they are easy to test."""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no values; measure at least one sample")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def max_in_window(sorted_times: Sequence[float], window_s: float = 1.0) -> int:
    """The most timestamps in any half-open window ``[t, t + window_s)``, over every t.

    The busiest window can always be slid right until it starts at a timestamp, so checking windows that
    start at each timestamp is exact.
    """
    best = 0
    for i, start in enumerate(sorted_times):
        end = bisect.bisect_left(sorted_times, start + window_s, lo=i)
        best = max(best, end - i)
    return best


def mean_in_window(sorted_times: Sequence[float], window_s: float = 1.0, step_s: float = 0.01) -> float:
    """The mean count of timestamps in a window ``[t, t + window_s)`` sliding from the first timestamp until
    the window ends at the last one, in ``step_s`` steps.

    This is the achieved rate a sliding-window limit allows, whatever the shape of the starts: a limiter that
    starts its 400 in one burst at the top of each second and one that spreads them both score 400.
    """
    if len(sorted_times) < 2:
        return float(len(sorted_times))
    first, last = sorted_times[0], sorted_times[-1]
    if last - first <= window_s:
        return float(len(sorted_times))
    steps = int((last - first - window_s) / step_s) + 1
    total = 0
    for k in range(steps):
        start = first + k * step_s
        total += bisect.bisect_left(sorted_times, start + window_s) - bisect.bisect_left(sorted_times, start)
    return total / steps


def per_interval(sorted_times: Sequence[float], origin: float, step_s: float) -> list[int]:
    """Counts of timestamps in consecutive ``step_s`` intervals from ``origin``."""
    if not sorted_times:
        return []
    counts = [0] * (int((sorted_times[-1] - origin) / step_s) + 1)
    for t in sorted_times:
        counts[max(0, int((t - origin) / step_s))] += 1
    return counts


def steady_rate(sorted_times: Sequence[float]) -> float:
    """Events per second between the first and the last event."""
    if len(sorted_times) < 2 or sorted_times[-1] <= sorted_times[0]:
        return 0.0
    return (len(sorted_times) - 1) / (sorted_times[-1] - sorted_times[0])
