"""Socket-free tests of the consumer's pieces: credit planning, straggler detection, bounded statistics."""

from __future__ import annotations

import math
import tracemalloc

import pytest

from pxdbg.consumer import credits
from pxdbg.consumer.credits import PeerLoad
from pxdbg.consumer.stats import ClientStats, WaitHistogram


def test_plan_fills_the_window_once_and_stops_at_the_last_frame():
    peers = [PeerLoad("a", 0, None, 16), PeerLoad("b", 0, None, 16)]
    got = credits.plan(10, 8, None, taken={11, 13}, peers=peers)
    asked = sorted(i for v in got.values() for i in v)
    assert asked == [10, 12, 14, 15, 16, 17]
    assert set(got) == {"a", "b"} and abs(len(got["a"]) - len(got["b"])) <= 1
    # never past the last frame (end is exclusive)
    got = credits.plan(10, 8, 13, taken=(), peers=peers)
    assert sorted(i for v in got.values() for i in v) == [10, 11, 12]
    assert credits.plan(13, 8, 13, taken=(), peers=peers) == {}
    assert credits.plan(0, 8, None, taken=range(8), peers=peers) == {}


def test_plan_prefers_the_faster_producer_and_respects_limits():
    fast, slow = PeerLoad("fast", 0, 0.01, 16), PeerLoad("slow", 0, 0.1, 16)
    got = credits.plan(0, 8, None, taken=(), peers=[slow, fast])
    assert got == {"fast": list(range(8))}, "a producer 10x slower gets nothing a fast one delivers sooner"
    got = credits.plan(0, 16, None, taken=(), peers=[slow, fast])
    assert got["slow"] == [9], "the slow one gets the frame it can deliver in time, late in the window"
    capped = credits.plan(0, 8, None, taken=(), peers=[PeerLoad("x", 0, 0.01, 3), PeerLoad("y", 5, 1.0, 6)])
    assert capped == {"x": [0, 1, 2], "y": [3]}, capped
    busy = [PeerLoad("x", 3, 0.01, 3)]
    assert credits.plan(0, 8, None, taken=(), peers=busy) == {}


def test_plan_without_known_speeds_balances_the_load():
    peers = [PeerLoad(k, n, None, 99) for k, n in (("a", 3), ("b", 0), ("c", 1))]
    got = credits.plan(0, 6, None, taken=(), peers=peers)
    loads = {p.key: p.outstanding + len(got.get(p.key, [])) for p in peers}
    assert sum(loads.values()) == 4 + 6 and max(loads.values()) - min(loads.values()) <= 1, loads


def test_overdue_judges_each_frame_by_its_producers_latency():
    copies = {5: [("a", 0.0)], 6: [("b", 0.0)], 7: [("a", 0.9)], 8: [("a", 0.0), ("b", 0.5)], 9: [("new", 0.0)]}
    latency = {"a": 0.1, "b": 0.5, "new": None}
    got = credits.overdue(1.0, copies, latency, factor=4, min_age=0.05)
    # 5: 1.0 s at a producer with 0.1 s latency; 6: 1.0 s < 4 x 0.5 s; 7: too young; 8: two copies already;
    # 9: a producer without history is judged by the others' median latency (0.3 s)
    assert got == [5]
    assert credits.overdue(1.5, copies, latency, factor=4, min_age=0.05) == [5, 7, 9]
    assert credits.overdue(1.0, copies, latency, factor=4, min_age=2.0) == []
    # nobody delivered yet: an initial guess of the latency
    assert credits.overdue(3.0, {1: [("x", 0.0)]}, {"x": None}, factor=4, min_age=0.05, initial_latency=1.0) == []
    assert credits.overdue(4.5, {1: [("x", 0.0)]}, {"x": None}, factor=4, min_age=0.05, initial_latency=1.0) == [1]


def test_histogram_percentiles_within_a_bucket():
    h = WaitHistogram()
    assert math.isnan(h.percentile(50))
    for i in range(1, 1001):
        h.record(i * 1e-3)  # 1 ms .. 1 s
    assert h.count == 1000 and h.max == pytest.approx(1.0)
    assert h.total == pytest.approx(sum(i * 1e-3 for i in range(1, 1001)))
    for q, exact in ((50, 0.5), (99, 0.99), (10, 0.1)):
        assert exact <= h.percentile(q) <= exact * 1.13, q
    assert h.percentile(100) == pytest.approx(1.0)
    h.record(5e4)  # above the last bucket: reported as the maximum
    assert h.percentile(100) == 5e4
    with pytest.raises(ValueError):
        h.percentile(101)


def test_client_stats_separate_warm_up():
    s = ClientStats(warmup=3)
    for w in (9.0, 9.0, 9.0, 0.001, 0.001):
        s.record_wait(w)
    assert s.events == 5 and s.wait_total_s == pytest.approx(27.002)
    assert s.wait_percentile(99) <= 0.00113, "the warm-up waits are not in the warm percentiles"
    assert s.wait_percentile(99, warm=False) == pytest.approx(9.0)
    assert s.wait_max_s == 9.0


@pytest.mark.slow
def test_statistics_memory_is_flat_over_many_events():
    """10^6 recorded waits (extrapolated to 10^7): memory must not grow with the number of events."""
    n = 1_000_000
    s = ClientStats(warmup=16)
    record = s.record_wait
    tracemalloc.start()
    try:
        for i in range(n // 10):
            record((i % 977) * 1e-5)
        after_tenth, _ = tracemalloc.get_traced_memory()
        for i in range(n - n // 10):
            record((i % 977) * 1e-5)
        after_all, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    growth = after_all - after_tenth
    per_event = growth / (n - n // 10)
    print(
        f"\nstatistics memory: {growth} bytes grown over {n - n // 10} events after the first {n // 10} "
        f"({per_event:.6f} bytes/event; extrapolated to 10^7 events: {per_event * 1e7 / 1024:.1f} kB; "
        f"the old per-event array: {8e7 / 2**20:.0f} MiB)"
    )
    assert s.events == n
    assert growth < 4096, f"statistics grew by {growth} bytes over {n} events"


def test_the_consumer_side_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, pxdbg.consumer, pxdbg.consumer.client; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
