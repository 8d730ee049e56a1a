"""Bounded consumer statistics: per-event waits in a fixed-bucket histogram, so memory stays flat.

A run of 10^7 events keeps the same few kilobytes as a run of ten: each wait falls into one of
:data:`BUCKETS_PER_DECADE` logarithmic buckets per decade between 1 microsecond and 1000 seconds, and a
percentile is read off the cumulative counts (within one bucket's width, about 12 %).
"""

from __future__ import annotations

from pxdbg.shared.histogram import BucketHistogram, log_bounds

BUCKETS_PER_DECADE = 20
LOWEST_S = 1e-6
HIGHEST_S = 1e3
#: Upper bounds of the buckets, seconds; one more bucket above the last holds anything longer.
EDGES = log_bounds(LOWEST_S, HIGHEST_S, BUCKETS_PER_DECADE)


class WaitHistogram(BucketHistogram):
    """Durations (seconds) per logarithmic bucket of :data:`EDGES`, plus count, sum and maximum."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(EDGES)

    def record(self, seconds: float) -> None:
        self.observe(seconds)


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
