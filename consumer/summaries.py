"""A campaign's consumer-side numbers: the per-job JSON summaries of ``pxdbg run --json`` summed into totals and
a Prometheus text file.

Simulation jobs are short and many (10,000 in a campaign), so each job only leaves the summary it prints on exit
(the Slurm and HTCondor recipes keep it next to its output); nothing is pushed and no series is born per job.
``pxdbg farm jobs DIR --prom FILE`` reads them all and writes one file of fixed series for node_exporter's
textfile collector: totals of events, waiting and every consumer counter (re-issues, hedges, quarantines), and
histograms over jobs of their wait p50 and p99. Summaries are input from many machines: each file is opened only
if it is a regular file (no FIFO, no link) of at most ``MAX_SUMMARY_BYTES``, checked field by field, and a bad
one is counted by reason and skipped.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "pxdbg_consumer"
#: A job summary is about 1 kB; anything much larger is not one.
MAX_SUMMARY_BYTES = 64 * 1024
#: Distinct counter names kept from all summaries together (names come from files; the series stay bounded).
MAX_COUNTER_NAMES = 64
#: Bucket upper bounds (seconds) of the histograms over jobs of their wait percentiles.
WAIT_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Consumer counters exported at zero when no job counted them, so rate() sees the first one.
COUNTER_HELP = {
    "frames_received": "Frames the jobs received.",
    "frames_reissued": "Frames re-asked from another producer after one was lost, drained or quarantined.",
    "hedged": "Frames also asked from a second producer because the first was slow.",
    "hedges_won": "Hedged frames the second producer delivered first.",
    "hedges_wasted": "Hedged frames both producers delivered.",
    "producers_quarantined": "Producers a job stopped using for misbehaving.",
    "producer_failures": "Producers a job lost (silent past the heartbeat timeout).",
    "producers_vanished": "Producers that disappeared from discovery during a job.",
    "producers_draining": "Producers that told a job they were shutting down.",
    "corrupt_frames": "Frames whose checksum or contents did not check.",
    "bad_messages": "Messages from producers that did not parse or made no sense.",
}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass
class CampaignTotals:
    """Sums over the job summaries read; ``skipped`` counts files that were not read, by reason."""

    jobs: int = 0
    events: int = 0
    wall_s: float = 0.0
    wait_s: float = 0.0
    counters: Counter = field(default_factory=lambda: Counter(dict.fromkeys(COUNTER_HELP, 0)))
    p50_counts: list[int] = field(default_factory=lambda: [0] * (len(WAIT_BUCKETS_S) + 1))
    p99_counts: list[int] = field(default_factory=lambda: [0] * (len(WAIT_BUCKETS_S) + 1))
    p50_sum_s: float = 0.0
    p99_sum_s: float = 0.0
    skipped: Counter = field(default_factory=Counter)
    read_s: float = 0.0

    def add(self, summary: dict) -> None:
        """Add one checked summary (see :func:`check_summary`)."""
        self.jobs += 1
        self.events += summary["events"]
        self.wall_s += summary["wall_s"]
        self.wait_s += summary["wait_ms_total"] / 1e3
        for name, value in summary["counters"].items():
            if name in self.counters or len(self.counters) < MAX_COUNTER_NAMES:
                self.counters[name] += value
            else:
                self.skipped["counter names past the bound"] += 1
        for key, counts in (("wait_ms_p50", self.p50_counts), ("wait_ms_p99", self.p99_counts)):
            seconds = summary[key] / 1e3
            counts[_bucket(seconds)] += 1
        self.p50_sum_s += summary["wait_ms_p50"] / 1e3
        self.p99_sum_s += summary["wait_ms_p99"] / 1e3

    def wait_p99_quantile(self, q: float) -> float | None:
        """The job wait p99 (seconds) that a fraction ``q`` of jobs stayed under, as a bucket's upper bound."""
        if not self.jobs:
            return None
        running = 0
        for bound, n in zip((*WAIT_BUCKETS_S, math.inf), self.p99_counts):
            running += n
            if running >= q * self.jobs:
                return bound
        return math.inf


def _bucket(seconds: float) -> int:
    """The bucket of ``seconds``: the first bound at or above it (the rule of :mod:`pxdbg.shared.histogram`)."""
    return bisect_left(WAIT_BUCKETS_S, seconds)


def _finite(value, lo: float = 0.0, hi: float = 1e12) -> bool:
    return (
        not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi
    )


def check_summary(data: object) -> str | None:
    """Why ``data`` is not a ``pxdbg run --json`` summary (a reason that quotes no value), or ``None``."""
    if not isinstance(data, dict):
        return "not a JSON object"
    events = data.get("events")
    if isinstance(events, bool) or not isinstance(events, int) or not 0 <= events <= 2**40:
        return "events is not a count"
    for key in ("wall_s", "wait_ms_total", "wait_ms_p50", "wait_ms_p99"):
        if not _finite(data.get(key)):
            return f"{key} is not a non-negative number"
    counters = data.get("counters")
    if not isinstance(counters, dict) or len(counters) > MAX_COUNTER_NAMES:
        return "counters is not a map of at most 64 names"
    for name, value in counters.items():
        if not _NAME.match(name) or isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            return "counters must map short lower-case names to counts"
    return None


def _read_small_regular(path: Path) -> bytes | str:
    """The bytes of ``path``, or why not: only a regular file of at most MAX_SUMMARY_BYTES, opened without
    following a link and without blocking (a FIFO would hang a plain open)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return "unreadable (a link, or no permission)"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size > MAX_SUMMARY_BYTES:
            return f"larger than {MAX_SUMMARY_BYTES} bytes"
        data = os.read(fd, MAX_SUMMARY_BYTES + 1)
        return data if len(data) <= MAX_SUMMARY_BYTES else f"larger than {MAX_SUMMARY_BYTES} bytes"
    finally:
        os.close(fd)


def summary_files(directory: str | os.PathLike, pattern: str = "*.json") -> list[Path]:
    """Every ``pattern`` file under ``directory``, walked without following links into other trees."""
    return sorted(p for p in Path(directory).rglob(pattern) if not p.is_symlink())


def collect(paths: Iterable[Path]) -> CampaignTotals:
    """Read and sum the summaries at ``paths``; bad ones are counted in ``skipped`` by reason."""
    totals = CampaignTotals()
    t0 = time.perf_counter()
    for path in paths:
        raw = _read_small_regular(path)
        if isinstance(raw, str):
            totals.skipped[raw] += 1
            continue
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            totals.skipped["not JSON"] += 1
            continue
        why = check_summary(data)
        if why is not None:
            totals.skipped[why] += 1
            continue
        totals.add(data)
    totals.read_s = time.perf_counter() - t0
    return totals


def _histogram(lines: list[str], name: str, help_text: str, counts: list[int], total: float) -> None:
    lines += [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} histogram"]
    running = 0
    for bound, n in zip(WAIT_BUCKETS_S, counts):
        running += n
        lines.append(f'{PREFIX}_{name}_bucket{{le="{bound!r}"}} {running}')
    running += counts[-1]
    lines += [
        f'{PREFIX}_{name}_bucket{{le="+Inf"}} {running}',
        f"{PREFIX}_{name}_sum {total!r}",
        f"{PREFIX}_{name}_count {running}",
    ]


def prometheus_text(totals: CampaignTotals) -> str:
    """The totals in the Prometheus text format (version 0.0.4): a fixed set of series, no per-job label."""
    lines: list[str] = []

    def counter(name: str, help_text: str, value: float) -> None:
        family = f"{PREFIX}_{name}_total"
        lines.extend([f"# HELP {family} {help_text}", f"# TYPE {family} counter", f"{family} {value!r}"])

    counter("jobs", "Job summaries read.", totals.jobs)
    counter(
        "summaries_skipped", "Files that were not job summaries (see pxdbg farm jobs).", sum(totals.skipped.values())
    )
    counter("events", "Events the jobs simulated.", totals.events)
    counter("job_seconds", "Wall-clock seconds of the jobs' event loops.", float(totals.wall_s))
    counter("wait_seconds", "Seconds the jobs spent waiting for background frames.", float(totals.wait_s))
    for name, value in sorted(totals.counters.items()):
        counter(name, COUNTER_HELP.get(name, f"Consumer counter {name.replace('_', ' ')}."), value)
    _histogram(
        lines, "job_wait_p50_seconds", "Jobs by their median wait per event.", totals.p50_counts, totals.p50_sum_s
    )
    _histogram(lines, "job_wait_p99_seconds", "Jobs by their p99 wait per event.", totals.p99_counts, totals.p99_sum_s)
    return "\n".join(lines) + "\n"


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a collector never reads half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
