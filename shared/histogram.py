"""A histogram over fixed buckets: memory stays the same however many observations go in.

One count per bucket (an observation ``x`` falls into the first bucket whose upper bound is ``>= x``, or into the
overflow bucket above the last bound), plus their number, sum and maximum. A percentile is read off the
cumulative counts as its bucket's upper bound (never above the maximum seen), so its error is one bucket's
width: :func:`log_bounds` spaces bounds evenly per decade for a fixed relative error. :class:`SharedHistogram`
adds a lock for one written by several threads.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Iterable


def log_bounds(lowest: float, highest: float, per_decade: int) -> tuple[float, ...]:
    """Upper bounds from ``lowest`` to ``highest``, ``per_decade`` of them per factor of ten (logarithmic)."""
    if not 0 < lowest < highest or per_decade < 1:
        raise ValueError("log_bounds needs 0 < lowest < highest and at least one bound per decade")
    steps = round(math.log10(highest / lowest) * per_decade)
    return tuple(lowest * 10 ** (i / per_decade) for i in range(steps + 1))


class BucketHistogram:
    """Counts of non-negative observations (durations, sizes) per bucket of ``bounds`` (increasing upper bounds)
    and one above them, plus ``count``, ``total`` (their sum) and ``max`` (0 before the first). Not thread-safe:
    see :class:`SharedHistogram`."""

    __slots__ = ("bounds", "count", "counts", "max", "total")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        if any(b >= c for b, c in zip(self.bounds, self.bounds[1:])):
            raise ValueError("histogram bounds must increase")
        self.counts = [0] * (len(self.bounds) + 1)  # the last one holds everything above the last bound
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100), as the upper bound of its bucket (never above the maximum);
        NaN when nothing was observed."""
        if not 0 <= q <= 100:
            raise ValueError(f"a percentile is in 0..100, got {q}")
        if not self.count:
            return math.nan
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(self.bounds[i], self.max) if i < len(self.bounds) else self.max
        return self.max  # pragma: no cover - the counts add up to count

    def snapshot(self) -> dict:
        """``{"buckets": upper bounds, "counts": cumulative counts (last = +Inf), "sum", "count"}``: the shape of a
        Prometheus histogram and of the status snapshot's histograms."""
        cumulative, running = [], 0
        for c in self.counts:
            running += c
            cumulative.append(running)
        return {"buckets": list(self.bounds), "counts": cumulative, "sum": self.total, "count": running}


class SharedHistogram(BucketHistogram):
    """A :class:`BucketHistogram` that several threads write and read: each call holds a lock."""

    __slots__ = ("_lock",)

    def __init__(self, bounds: Iterable[float]) -> None:
        super().__init__(bounds)
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            super().observe(value)

    def percentile(self, q: float) -> float:
        with self._lock:
            return super().percentile(q)

    def snapshot(self) -> dict:
        with self._lock:
            return super().snapshot()
