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


def test_overdue_judges_each_frame_by_its_producers_latency_and_the_others():
    copies = {5: [("a", 0.0)], 6: [("b", 0.0)], 7: [("a", 0.9)], 8: [("a", 0.0), ("b", 0.5)], 9: [("new", 0.0)]}
    latency = {"a": 0.1, "b": 0.3, "new": None}
    # a frame must be older than 4x its producer's latency and 4x the others' median latency (a: 0.3 s, the
    # only other that delivered; b: 0.1 s; new, without history: 0.2 s for both)
    # 5: 1.0 s < 4 x 0.3 s; 6: < 4 x 0.3 s (its own); 7: too young; 8: two copies already; 9: 1.0 s > 4 x 0.2 s
    assert credits.overdue(1.0, copies, latency, factor=4, min_age=0.05) == [9]
    assert credits.overdue(1.3, copies, latency, factor=4, min_age=0.05) == [5, 6, 9]
    assert credits.overdue(2.2, copies, latency, factor=4, min_age=0.05) == [5, 6, 7, 9]
    assert credits.overdue(3.0, copies, latency, factor=4, min_age=5.0) == []
    # nobody delivered yet: an initial guess of the latency
    assert credits.overdue(3.0, {1: [("x", 0.0)]}, {"x": None}, factor=4, min_age=0.05, initial_latency=1.0) == []
    assert credits.overdue(4.5, {1: [("x", 0.0)]}, {"x": None}, factor=4, min_age=0.05, initial_latency=1.0) == [1]
    # a silent producer's frames are due after min_age alone
    assert credits.overdue(0.1, {1: [("b", 0.0)]}, latency, factor=4, min_age=0.05, urgent=["b"]) == [1]
    # a draining one's by the others' latency alone (it sends what it started; asked again at min_age, each was
    # a duplicate): b's others are a (0.1 s) and new (none): due after 4 x 0.1 s, whatever its own 0.3 s
    assert credits.overdue(0.1, {1: [("b", 0.0)]}, latency, factor=4, min_age=0.05, draining=["b"]) == []
    assert credits.overdue(0.41, {1: [("b", 0.0)]}, latency, factor=4, min_age=0.05, draining=["b"]) == [1]
    # a producer new to this consumer (its latency on a few frames, before its queue filled) makes no other one a
    # straggler as a whole: old's 0.4 s is 8x new's 0.05 s, yet its frames are judged by its own latency
    fresh = {"old": 0.4, "new": 0.05}
    assert credits.overdue(0.3, {1: [("old", 0.0)]}, fresh, factor=4, min_age=0.05) == [1]
    assert credits.overdue(0.3, {1: [("old", 0.0)]}, fresh, factor=4, min_age=0.05, unsettled=["new"]) == []
    assert credits.overdue(1.7, {1: [("old", 0.0)]}, fresh, factor=4, min_age=0.05, unsettled=["new"]) == [1]


def test_a_uniformly_slow_farm_makes_no_stragglers_but_one_far_slower_producer_does():
    """Saturated: every producer's latency is high and fluctuates; a frame 4x its own producer's recent latency
    is not 4x the others', so nothing is hedged. One producer 10x (or infinitely) slower than the others is."""
    busy = {"a": 2.0, "b": 2.4, "c": 1.6}  # seconds: thirty consumers share them
    copies = {i: [(k, 0.0)] for i, k in enumerate("abc")}
    assert credits.overdue(7.0, copies, busy, factor=4, min_age=0.05) == []  # 7 s > 4 x 1.6 s, < 4 x 2.0 s
    assert credits.overdue(9.7, copies, busy, factor=4, min_age=0.05) == [0, 1, 2]  # beyond everybody's
    slow = {"a": 0.05, "b": 0.05, "slow": None}  # the slow one has not delivered yet
    assert credits.overdue(0.3, {0: [("slow", 0.0)], 1: [("a", 0.1)]}, slow, factor=4, min_age=0.05) == [0]
    # once it delivered, its own latency (10x the others') does not shelter its frames: it is far slower
    slow = {"a": 0.05, "b": 0.05, "slow": 0.5}
    assert credits.overdue(0.3, {0: [("slow", 0.0)]}, slow, factor=4, min_age=0.05) == [0]
    # one 3x slower is not: its frames are judged by its own latency
    slow = {"a": 0.05, "b": 0.05, "slow": 0.15}
    assert credits.overdue(0.3, {0: [("slow", 0.0)]}, slow, factor=4, min_age=0.05) == []
    assert credits.overdue(0.61, {0: [("slow", 0.0)]}, slow, factor=4, min_age=0.05) == [0]
    hung = {"a": 0.05, "b": 0.05, "hung": 0.05}  # its latency was normal until its model hung
    assert credits.overdue(0.3, {0: [("hung", 0.0)]}, hung, factor=4, min_age=0.05) == [0]


def test_a_hedge_goes_only_to_a_producer_with_spare_credit():
    assert credits.has_spare(PeerLoad("idle", 0, None, 16))
    assert not credits.has_spare(PeerLoad("full", 1, 0.01, 1))
    assert credits.has_spare(PeerLoad("keeping up", 3, 0.01, 16, latency=0.05, oldest_age=0.04))
    assert not credits.has_spare(PeerLoad("behind", 3, 0.01, 16, latency=0.05, oldest_age=0.2))
    assert not credits.has_spare(PeerLoad("unknown", 3, None, 16, latency=None, oldest_age=0.01))
    copies = {0: [("slow", 0.0)], 1: [("slow", 0.0)]}
    latency = {"slow": None, "a": 0.05, "b": 0.05}
    behind = [PeerLoad("a", 4, 0.01, 16, 0.05, 1.0), PeerLoad("b", 4, 0.01, 16, 0.05, 1.0)]
    got = credits.hedges(1.0, copies, latency, behind, tokens(10), factor=4, min_age=0.05)
    assert got.asked == {} and got.no_spare == [0, 1] and got.tokens_spent == 0
    one = [PeerLoad("a", 4, 0.01, 16, 0.05, 1.0), PeerLoad("b", 0, 0.01, 16, 0.05, 0.0)]
    got = credits.hedges(1.0, copies, latency, one, tokens(10), factor=4, min_age=0.05)
    # b takes frame 0; with it, b owes one frame of age 0 (not behind) and takes frame 1 too
    assert got.asked == {"b": [0, 1]} and got.first == {0: "slow", 1: "slow"} and got.tokens_spent == 2
    capped = [PeerLoad("b", 0, 0.01, 1, 0.05, 0.0)]
    got = credits.hedges(1.0, copies, latency, capped, tokens(10), factor=4, min_age=0.05)
    assert got.asked == {"b": [0]} and got.no_spare == [1]
    # never to a producer that holds the frame already
    got = credits.hedges(1.0, {0: [("b", 0.0)]}, {"b": 0.05, "a": 0.05}, capped, tokens(10), factor=4, min_age=0.05)
    assert got.asked == {} and got.no_spare == [0]


def test_hedges_stay_within_the_budget():
    budget = credits.HedgeBudget(ratio=0.05, burst=4)
    assert budget.tokens == 4
    copies = {i: [("hung", 0.0)] for i in range(6)}
    latency = {"hung": 0.05, "a": 0.05}
    idle = [PeerLoad("a", 0, 0.01, 16, 0.05, 0.0)]
    got = credits.hedges(1.0, copies, latency, idle, budget, factor=4, min_age=0.05)
    assert got.asked == {"a": [0, 1, 2, 3]} and got.over_budget == [4, 5] and got.tokens_spent == 4
    assert budget.tokens == 0, "hedges() spends the budget it is given"
    budget.earn(19)
    assert budget.tokens == pytest.approx(0.95)
    got = credits.hedges(1.0, copies, latency, idle, budget, factor=4, min_age=0.05)
    assert got.asked == {} and got.over_budget == list(range(6)) and budget.tokens == pytest.approx(0.95)
    budget.earn(1)
    assert credits.hedges(1.0, copies, latency, idle, budget, factor=4, min_age=0.05).tokens_spent == 1
    assert budget.tokens == pytest.approx(0.0)
    budget.earn(10**6)
    assert budget.tokens == 4, "the bucket holds at most burst tokens"
    assert credits.HedgeBudget(ratio=0.0).tokens == 0
    # a silent or draining producer's frames are re-issued without a token, ahead of the budget (a draining
    # one's once late by the others' latency: 4 x 0.05 s)
    empty = credits.HedgeBudget(ratio=0.0)
    late = {0: [("d", 0.9)]}
    got = credits.hedges(1.0, late, {"d": 0.05, "a": 0.05}, idle, empty, factor=4, min_age=0.05, urgent=["d"])
    assert got.asked == {"a": [0]} and got.tokens_spent == 0
    got = credits.hedges(1.0, late, {"d": 0.05, "a": 0.05}, idle, empty, factor=4, min_age=0.05, draining=["d"])
    assert got.asked == {} and got.over_budget == []
    got = credits.hedges(1.25, late, {"d": 0.05, "a": 0.05}, idle, empty, factor=4, min_age=0.05, draining=["d"])
    assert got.asked == {"a": [0]} and got.tokens_spent == 0
    # over many frames: at most burst + ratio x received hedges, whatever is overdue
    budget, hedged = credits.HedgeBudget(ratio=0.05, burst=4), 0
    for received in range(1000):
        got = credits.hedges(9.0, {received: [("hung", 0.0)]}, latency, idle, budget, factor=4, min_age=0.05)
        hedged += got.tokens_spent
        budget.earn(1)
    assert 4 + 0.05 * 1000 - 1 <= hedged <= 4 + 0.05 * 1000


def tokens(n: float) -> credits.HedgeBudget:
    """A budget holding ``n`` tokens (and earning none)."""
    return credits.HedgeBudget(ratio=0.0, tokens=n)


def test_a_silent_or_draining_producer_s_frames_go_to_a_busy_producer_below_its_limit():
    """An urgent frame will not come from its producer: a producer behind with its own frames (no spare credit
    for a hedge) still takes it while below its limit; at its limit it does not."""
    busy = [PeerLoad("a", 6, 0.015, 16, latency=0.05, oldest_age=0.2)]  # behind: 0.2 s > its 0.05 s latency
    copies = {7: [("stopped", 0.0)]}
    latency = {"stopped": 0.05, "a": 0.05}
    hedge = credits.hedges(1.0, copies, latency, busy, tokens(4), factor=4, min_age=0.05)
    assert hedge.asked == {} and hedge.no_spare == [7], "a hedge needs spare credit"
    urgent = credits.hedges(1.0, copies, latency, busy, tokens(0), factor=4, min_age=0.05, urgent=["stopped"])
    assert urgent.asked == {"a": [7]} and urgent.tokens_spent == 0
    full = [PeerLoad("a", 16, 0.015, 16, latency=0.05, oldest_age=0.2)]
    assert credits.hedges(1.0, copies, latency, full, tokens(0), factor=4, min_age=0.05, urgent=["stopped"]).asked == {}


def test_audit_copies_are_grouped_by_equality_largest_first():
    from pxdbg.consumer.dispatch import agreeing

    assert agreeing({"a": 1, "b": 1}) == [(1, ["a", "b"])]
    assert agreeing({"forger": 2, "a": 1, "b": 1}) == [(1, ["a", "b"]), (2, ["forger"])]  # a majority
    tie = agreeing({"a": 1, "b": 2})
    assert len(tie) == 2 and len(tie[0][1]) == len(tie[1][1]) == 1  # no majority: a third copy is needed


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


# -- the client's settings ------------------------------------------------------------------------------------
def test_client_options_are_one_frozen_validated_object():
    from pxdbg.consumer import ClientOptions
    from pxdbg.shared.errors import ConfigError
    from pxdbg.shared.spec import ProducerSpec

    opts = ClientOptions(seed=5, events=10, first_frame=3, heartbeat_interval=1, heartbeat_timeout=3)
    assert opts.end == 13 and opts.policy.heartbeat_timeout == 3.0 and isinstance(opts.heartbeat_interval, float)
    assert opts.policy.pong_timeout == 0.5 and opts.policy.warn_interval == 10.0
    with pytest.raises(AttributeError):
        opts.seed = 6  # frozen
    for bad in (
        {"prefetch": 0},
        {"prefetch": 1.5},
        {"events": -1},
        {"first_frame": True},
        {"hedge_budget": 2},
        {"audit": -0.1},
        {"max_producers": 0},
        {"max_strikes": 0},
        {"straggler_factor": 1},
        {"quarantine": float("nan")},
        {"heartbeat_timeout": 0.9},
        {"spec": "resnet"},
    ):
        name = next(iter(bad))
        with pytest.raises(ConfigError, match=name if name != "heartbeat_timeout" else "twice"):
            ClientOptions(**bad)
    # the keyword form: fields replace those of the options given; the model is one field, spec
    built = ClientOptions.build(opts, prefetch=4, spec=ProducerSpec(model="resnet"))
    assert built.prefetch == 4 and built.seed == 5 and built.spec == ProducerSpec(model="resnet")
    with pytest.raises(TypeError, match=r"model \(a model's settings go in spec=ProducerSpec"):
        ClientOptions.build(model="resnet")
    with pytest.raises(TypeError, match="prefech"):
        ClientOptions.build(prefech=4)
    # the defaults that depend on where the producers are
    farm, local = opts.for_source(local=False), opts.for_source(local=True)
    assert (farm.hedge_budget, farm.audit) == (0.05, 0.01) and (local.hedge_budget, local.audit) == (0.0, 0.0)
    assert ClientOptions(hedge_budget=0.2, audit=0).for_source(local=True).hedge_budget == 0.2
