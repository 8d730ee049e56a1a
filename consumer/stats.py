"""Bounded consumer statistics: per-event waits in a fixed-bucket histogram, so memory stays flat.

A run of 10^7 events keeps the same few kilobytes as a run of ten: each wait falls into one of
:data:`BUCKETS_PER_DECADE` logarithmic buckets per decade between 1 microsecond and 1000 seconds, and a
percentile is read off the cumulative counts (within one bucket's width, about 12 %).
"""

from __future__ import annotations

import math
from bisect import bisect_left

BUCKETS_PER_DECADE = 20
LOWEST_S = 1e-6
HIGHEST_S = 1e3
#: Upper bounds of the buckets, seconds; one more bucket above the last holds anything longer.
EDGES = tuple(
    LOWEST_S * 10 ** (i / BUCKETS_PER_DECADE)
    for i in range(round(math.log10(HIGHEST_S / LOWEST_S) * BUCKETS_PER_DECADE) + 1)
)


class WaitHistogram:
    """Counts of durations per logarithmic bucket, plus count, sum and maximum. Memory does not grow."""

    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(EDGES) + 1)
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def record(self, seconds: float) -> None:
        self.counts[bisect_left(EDGES, seconds)] += 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100), as the upper bound of its bucket (never above the maximum);
        NaN when nothing was recorded."""
        if not 0 <= q <= 100:
            raise ValueError(f"a percentile is in 0..100, got {q}")
        if not self.count:
            return math.nan
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(EDGES[i] if i < len(EDGES) else self.max, self.max)
        return self.max  # pragma: no cover - the counts add up to count


class ClientStats:
    """What a consumer measured: waits in :meth:`~pxdbg.consumer.BackgroundClient.next` (all, and once warm:
    after the first ``warmup`` events, which include the pipeline's start)."""

    def __init__(self, warmup: int = 0) -> None:
        self.warmup = warmup
        self.all = WaitHistogram()
        self.warm = WaitHistogram()

    def record_wait(self, seconds: float) -> None:
        self.all.record(seconds)
        if self.all.count > self.warmup:
            self.warm.record(seconds)

    @property
    def events(self) -> int:
        return self.all.count

    @property
    def wait_total_s(self) -> float:
        return self.all.total

    @property
    def wait_max_s(self) -> float:
        return self.all.max

    def wait_percentile(self, q: float, *, warm: bool = True) -> float:
        """Seconds: the ``q``-th percentile of the waits once warm (of all waits if none is warm yet, or with
        ``warm=False``); NaN before the first event."""
        hist = self.warm if warm and self.warm.count else self.all
        return hist.percentile(q)
