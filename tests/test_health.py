"""The consumer's producer-health rules, as pure functions of a producer's state and ``now`` (no sockets, no
clock): every rule of :mod:`pxdbg.consumer.health`, each case in microseconds."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from pxdbg.consumer import health
from pxdbg.consumer.health import (
    ALIVE,
    CONNECTING,
    DRAINING,
    QUARANTINED,
    HealthPolicy,
    PeerHealth,
    typical_latency,
)
from pxdbg.shared.errors import ConfigError

POLICY = HealthPolicy(heartbeat_interval=0.1, heartbeat_timeout=2.0, stall_timeout=3.0, quarantine_s=60.0)


def alive(now: float = 100.0, latency: float | None = None, **fields) -> PeerHealth:
    peer = PeerHealth(state=ALIVE, last_recv=now, last_frame=now, latency=latency, **fields)
    return peer


# -- typical latency ---------------------------------------------------------------------------------------
def test_typical_latency_is_the_median_of_the_known_values():
    assert typical_latency([]) is None
    assert typical_latency([None, 0.0, None]) is None
    assert typical_latency([0.3]) == 0.3
    assert typical_latency([0.1, None, 0.3]) == pytest.approx(0.2), "two values: their mean, not the slower one"
    assert typical_latency([0.5, 0.1, 0.3]) == 0.3
    assert typical_latency(iter([0.4, 0.2, 0.1, 0.3])) == pytest.approx(0.25)


def test_credits_and_the_slow_verdict_share_the_typical_latency():
    """With two other producers at 0.1 s and 0.3 s the typical latency is 0.2 s for both the straggler check
    and the slow verdict: a frame 0.9 s old (4 x 0.2 = 0.8) is overdue, and a producer 0.9 s late is slow."""
    from pxdbg.consumer import credits

    latency = {"a": 0.1, "b": 0.3, "c": 0.9}
    assert credits.overdue(100.9 + 1e-6, {7: [("c", 100.0)]}, latency, factor=4, min_age=0.05) == [7]
    others = [alive(latency=0.1), alive(latency=0.3)]
    peer = alive(latency=0.9, slow_strikes=3, judged_slow_at=99.0)
    assert health.judge_slow(peer, 100.0, POLICY, others).kind == health.SLOW
    peer = alive(latency=0.7, slow_strikes=3, judged_slow_at=99.0)
    assert health.judge_slow(peer, 100.0, POLICY, others).kind == health.HEALTHY


# -- the policy ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("heartbeat_interval", 0),
        ("heartbeat_timeout", float("nan")),
        ("stall_timeout", float("inf")),
        ("quarantine_s", -1),
        ("straggler_min_s", True),
        ("straggler_factor", 1.0),
        ("straggler_factor", float("inf")),
        ("max_strikes", 0),
        ("max_strikes", 2.5),
        ("max_doublings", -1),
        ("pong_timeout", 0),
        ("warn_interval", "10"),
    ],
)
def test_the_policy_refuses_bad_thresholds_naming_them(field, bad):
    with pytest.raises(ConfigError, match=field):
        HealthPolicy(**{field: bad})


def test_the_policy_derives_the_pong_and_warning_times():
    assert HealthPolicy(heartbeat_interval=2.0, heartbeat_timeout=5.0).pong_timeout == 1.0
    assert HealthPolicy(heartbeat_interval=0.1, heartbeat_timeout=1.0).pong_timeout == 0.25
    assert HealthPolicy(stall_timeout=60).warn_interval == 10.0
    assert HealthPolicy(stall_timeout=3).warn_interval == 1.5
    with pytest.raises(ConfigError, match="twice the heartbeat_interval"):
        HealthPolicy(heartbeat_interval=1.0, heartbeat_timeout=2.0)
    with pytest.raises(AttributeError):
        POLICY.max_strikes = 5  # frozen: one policy for the whole run


def test_quarantines_double_up_to_the_cap_and_for_the_run_is_forever():
    policy = HealthPolicy(quarantine_s=60.0, max_doublings=3)
    assert [policy.quarantine_for(n) for n in (1, 2, 3, 4, 5, 9)] == [60, 120, 240, 480, 480, 480]
    assert policy.quarantine_for(1, for_run=True) == math.inf
    assert HealthPolicy().quarantine_for(20) == 60 * 2**10


# -- liveness: lost, drained, suspect ----------------------------------------------------------------------
def test_a_producer_silent_past_the_heartbeat_timeout_is_lost():
    peer = alive(100.0)
    assert health.assess(peer, 102.0, POLICY, []).kind != health.LOST
    verdict = health.assess(peer, 102.01, POLICY, [])
    assert verdict.kind == health.LOST and verdict.reason == "silent for 2.0 s"


def test_a_draining_producer_that_goes_silent_is_drained_not_lost():
    peer = alive(100.0)
    peer.outstanding = {5: 100.0, 6: 100.0}
    assert health.on_draining(peer, [6, 9], "scancel") == [6], "only what it owed is re-issued"
    assert peer.state == DRAINING and peer.why == "draining: scancel" and peer.outstanding == {5: 100.0}
    assert health.assess(peer, 101.0, POLICY, []).kind == health.HEALTHY, "no stall or pong verdict while draining"
    assert health.assess(peer, 103.0, POLICY, []).kind == health.DRAINED


def test_a_missed_pong_makes_it_suspect_once_and_an_answer_clears_it():
    peer = alive(100.0)
    # a pong may take heartbeat_interval + pong_timeout (0.1 + 0.25 s)
    assert health.assess(peer, 100.35, POLICY, []).kind == health.HEALTHY
    verdict = health.assess(peer, 100.36, POLICY, [])
    assert verdict.kind == health.SUSPECT and peer.silent_since == 100.36
    assert health.assess(peer, 100.5, POLICY, []).kind == health.HEALTHY, "said once, not on every pass"
    assert peer.silent_since == 100.36
    assert health.on_message(peer, 100.86) == pytest.approx(0.5)
    assert peer.silent_since == 0.0 and peer.last_recv == 100.86
    assert health.on_message(peer, 100.9) == 0.0


def test_a_connecting_producer_is_judged_by_nothing():
    peer = PeerHealth()
    assert health.assess(peer, 1e6, POLICY, []).kind == health.HEALTHY


# -- work: stalled ------------------------------------------------------------------------------------------
def test_a_producer_that_answers_but_delivers_nothing_is_stalled():
    peer = alive(100.0)
    peer.outstanding = {1: 100.5, 2: 101.0}
    peer.last_recv = 103.5  # it answers pings
    assert peer.busy_for(103.5) == 3.0
    assert health.assess(peer, 103.5, POLICY, []).kind == health.HEALTHY
    verdict = health.assess(peer, 103.6, POLICY, [])
    assert verdict.kind == health.STALLED and verdict.quarantine_now
    assert verdict.reason == "answered heartbeats but delivered none of the frames asked of it for 3.1 s"


def test_a_frame_restarts_the_stall_clock_and_owing_nothing_is_no_stall():
    peer = alive(100.0)
    peer.outstanding = {1: 100.0, 2: 100.0}
    peer.note_frame(102.0, 100.0)
    del peer.outstanding[1]
    peer.last_recv = 104.9
    assert peer.busy_for(104.9) == pytest.approx(2.9)
    assert health.assess(peer, 104.9, POLICY, []).kind == health.HEALTHY
    peer.outstanding.clear()
    peer.last_recv = 1000.0
    assert peer.busy_for(1000.0) == 0.0 and health.assess(peer, 1000.0, POLICY, []).kind == health.HEALTHY


def test_a_stall_is_warned_about_once_per_warning_interval():
    peer = alive(100.0)
    peer.outstanding = {1: 100.0}
    assert health.stall_warning(peer, 101.5, POLICY) is None  # warn interval: 1.5 s
    assert health.stall_warning(peer, 101.6, POLICY) == pytest.approx(1.6)
    assert health.stall_warning(peer, 102.0, POLICY) is None
    assert health.stall_warning(peer, 103.2, POLICY) == pytest.approx(3.2)


def test_latency_and_time_per_frame_are_recent_averages():
    peer = alive(0.0)
    peer.note_frame(1.0, 0.0)
    assert (peer.latency, peer.seconds_per_frame, peer.frames) == (1.0, 1.0, 1)
    peer.note_frame(1.5, 0.5)  # 1.0 s latency, 0.5 s since the last frame
    assert peer.latency == pytest.approx(1.0) and peer.seconds_per_frame == pytest.approx(0.85)
    peer.note_frame(4.5, 1.5)
    assert peer.latency == pytest.approx(0.7 + 0.3 * 3.0) and peer.last_frame == 4.5


# -- bad messages and restarts ------------------------------------------------------------------------------
def test_bad_messages_quarantine_after_max_strikes():
    peer = alive()
    assert health.on_bad_message(peer, POLICY, "sent corrupt frames").kind == health.HEALTHY
    assert health.on_bad_message(peer, POLICY, "sent corrupt frames").kind == health.HEALTHY
    verdict = health.on_bad_message(peer, POLICY, "sent corrupt frames")
    assert verdict.kind == health.QUARANTINED and verdict.quarantine_now
    assert verdict.reason == "sent corrupt frames; 3 bad messages"


def test_a_producer_that_forgets_the_consumer_every_time_is_quarantined():
    peer = alive()
    assert health.on_rehello(peer, POLICY) == health.Verdict(health.LOST, "it restarted")
    assert health.on_rehello(peer, POLICY).kind == health.LOST
    peer.note_frame(1.0, 0.5)  # a frame in between: a rare restart, counted afresh
    assert peer.rehellos == 0
    assert [health.on_rehello(peer, POLICY).kind for _ in range(3)] == [health.LOST, health.LOST, health.QUARANTINED]
    assert "forgot this consumer 3 times in a row" in health.on_rehello(PeerHealth(rehellos=2), POLICY).reason


# -- slow ---------------------------------------------------------------------------------------------------
def test_an_overtaken_producer_is_slow_only_after_answering_past_the_first_verdict():
    fast = [alive(100.0, latency=0.01), alive(100.0, latency=0.02)]
    peer = alive(100.0, latency=1.0)
    kinds = [health.on_overtaken(peer, 100.0, POLICY, fast).kind for _ in range(3)]
    assert kinds == [health.HEALTHY] * 3 and peer.slow_strikes == 3
    assert peer.judged_slow_at == 100.0, "the third strike is a first verdict, not yet a quarantine"
    # no answer since the first verdict: cut off (a partition), left to the heartbeat timeout
    assert health.assess(peer, 100.15, POLICY, fast).kind == health.HEALTHY
    health.on_message(peer, 100.2)  # a pong: it is there, and slow
    verdict = health.assess(peer, 100.25, POLICY, fast)
    assert verdict.kind == health.SLOW and verdict.quarantine_now
    assert verdict.reason == (
        "far slower than the others: 3 frames in a row came first from another producer (its recent latency 1000 ms)"
    )


def test_a_producer_that_hangs_from_the_start_is_slow_by_the_age_of_what_it_owes():
    fast = [alive(100.0, latency=0.01)]
    peer = alive(100.0)  # delivered nothing yet
    peer.outstanding = {0: 100.0}
    peer.slow_strikes = 3
    assert health.judge_slow(peer, 100.03, POLICY, fast).kind == health.HEALTHY, "0.03 s is not 4 x 0.01 s"
    assert peer.judged_slow_at == 0.0
    assert health.judge_slow(peer, 100.05, POLICY, fast).kind == health.HEALTHY and peer.judged_slow_at == 100.05
    peer.last_recv = 100.06
    verdict = health.judge_slow(peer, 100.07, POLICY, fast)
    assert verdict.kind == health.SLOW and "it delivered no frame yet" in verdict.reason


def test_no_slow_verdict_without_other_usable_producers_or_below_the_strikes():
    peer = alive(100.0, latency=5.0, slow_strikes=3, judged_slow_at=99.0)
    assert health.judge_slow(peer, 100.0, POLICY, []).kind == health.HEALTHY
    assert peer.judged_slow_at == 0.0, "the verdict starts again once others are back"
    quarantined = PeerHealth(state=QUARANTINED, latency=0.01)
    assert health.judge_slow(peer, 100.0, POLICY, [quarantined, peer]).kind == health.HEALTHY
    # others there but none has a latency yet: slow by the strikes alone (after an answer)
    newcomer = alive(100.0)
    assert health.judge_slow(peer, 100.0, POLICY, [newcomer]).kind == health.HEALTHY
    peer.last_recv = 100.1
    assert health.judge_slow(peer, 100.2, POLICY, [newcomer]).kind == health.SLOW
    few = alive(100.0, latency=5.0, slow_strikes=2, judged_slow_at=99.0)
    assert health.judge_slow(few, 100.0, POLICY, [alive(latency=0.01)]).kind == health.HEALTHY
    assert few.judged_slow_at == 0.0


def test_a_silent_or_non_alive_producer_collects_no_slow_strikes():
    fast = [alive(100.0, latency=0.01)]
    silent = alive(100.0, latency=1.0)
    assert health.on_overtaken(silent, 100.21, POLICY, fast).kind == health.HEALTHY
    assert silent.slow_strikes == 0, "silent for more than two heartbeats: lost, not slow"
    assert health.on_overtaken(silent, 100.19, POLICY, fast).kind == health.HEALTHY and silent.slow_strikes == 1
    for state in (CONNECTING, DRAINING, QUARANTINED):
        peer = PeerHealth(state=state, last_recv=100.0)
        health.on_overtaken(peer, 100.0, POLICY, fast)
        assert peer.slow_strikes == 0, state


def test_a_frame_in_time_clears_the_slow_strikes_and_a_late_one_does_not():
    others = [alive(latency=0.1), alive(latency=0.3)]  # typical 0.2 s: in time up to 0.8 s
    peer = alive(latency=1.0, slow_strikes=2, judged_slow_at=50.0)
    health.on_own_frame(peer, 0.81, POLICY, others)
    assert peer.slow_strikes == 2 and peer.judged_slow_at == 50.0
    health.on_own_frame(peer, 0.8, POLICY, others)
    assert peer.slow_strikes == 0 and peer.judged_slow_at == 0.0
    assert health.in_time(peer, 0.04, POLICY, [alive(latency=0.001)]), "straggler_min_s is always in time"
    assert health.in_time(peer, 99.0, POLICY, []), "no others: nothing to compare with"


# -- quarantine, loss, restart ------------------------------------------------------------------------------
def test_a_quarantine_gives_back_the_frames_doubles_and_ends():
    peer = alive(100.0)
    peer.outstanding = {9: 100.0, 3: 100.0}
    peer.silent_since = 100.0
    assert health.quarantine(peer, 100.0, POLICY, "sent corrupt frames; 3 bad messages") == [3, 9]
    assert peer.state == QUARANTINED and peer.outstanding == {} and peer.silent_since == 0.0
    assert peer.quarantined_until == 160.0 and peer.quarantines == 1
    assert health.quarantine(peer, 101.0, POLICY, "again") == [] and peer.why.startswith("sent corrupt")
    verdict = health.assess(peer, 159.9, POLICY, [])
    assert verdict == health.Verdict(health.QUARANTINED, peer.why, 160.0) and not verdict.quarantine_now
    assert health.assess(peer, 160.0, POLICY, []).kind == health.QUARANTINE_OVER
    peer.strikes, peer.slow_strikes, peer.rehellos, peer.judged_slow_at = 3, 3, 2, 150.0
    health.restart(peer)
    assert (peer.state, peer.strikes, peer.slow_strikes, peer.rehellos, peer.judged_slow_at) == (CONNECTING, 0, 0, 0, 0)
    assert health.on_welcome(peer, 170.0) and peer.state == ALIVE and peer.why == ""
    assert not health.on_welcome(peer, 171.0), "a second welcome changes nothing"
    health.quarantine(peer, 200.0, POLICY, "again")
    assert peer.quarantined_until == 200.0 + 120.0, "the second quarantine is twice as long"


def test_a_quarantine_for_the_run_never_ends():
    peer = alive(100.0)
    health.quarantine(peer, 100.0, POLICY, "slow")
    health.quarantine(peer, 101.0, POLICY, "its frame differs (audit)", for_run=True)
    assert peer.quarantined_until == math.inf and peer.why == "slow"
    assert health.assess(peer, 1e12, POLICY, []).kind == health.QUARANTINED
    fresh = alive(100.0)
    health.quarantine(fresh, 100.0, POLICY, "forged", for_run=True)
    assert fresh.quarantined_until == math.inf


def test_a_lost_producer_gives_back_its_frames_and_starts_afresh():
    peer = alive(100.0, slow_strikes=2, judged_slow_at=99.0, silent_since=100.5, last_ping=100.4, last_sent=100.4)
    peer.outstanding = {4: 99.0, 2: 99.0}
    assert health.lose(peer, "silent for 2.1 s") == [2, 4]
    assert peer.state == CONNECTING and peer.why == "lost: silent for 2.1 s"
    assert peer.slow_strikes == 0 and peer.judged_slow_at == peer.silent_since == peer.last_ping == peer.last_sent == 0
    assert health.lose(alive(), "it said goodbye (done)", drained=True) == []


def test_a_limit_error_caps_the_producer_at_what_it_still_owes():
    peer = alive()
    peer.outstanding = {i: 1.0 for i in range(6)}
    assert health.on_limit(peer, [3, 4, 5, 77]) == [3, 4, 5]
    assert peer.cap == 3 and sorted(peer.outstanding) == [0, 1, 2]
    assert health.on_limit(peer, [0, 1, 2]) == [0, 1, 2] and peer.cap == 1


# -- the module is pure -------------------------------------------------------------------------------------
def test_the_health_module_imports_no_sockets_and_reads_no_clock():
    source = Path(health.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0] if node.level == 0 else ".")
    assert imported <= {"__future__", "math", "collections", "dataclasses", "statistics", "pxdbg"}, imported
    assert "monotonic" not in source and "perf_counter" not in source
