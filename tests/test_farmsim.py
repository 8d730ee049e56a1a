"""The farm simulator: closed-form answers, the emulated Slurm farm's measured figures, faults, the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pxdbg.consumer import credits, health
from pxdbg.consumer.subset import Subset
from pxdbg.farmsim import Settings, Sim, measure, simulate
from pxdbg.producer.queues import ConsumerQueues


def test_a_saturated_farm_delivers_the_sum_of_its_producers_rates():
    # 3 producers at 10 ms per frame, no spread: 300 frames/s; 30 consumers with no work ask more than that
    s = Settings(producers=3, consumers=30, frame_s=0.01, frame_cv=0.0, events=None, duration=20.0, seed=1)
    m = simulate(s)
    assert s.capacity() == pytest.approx(300.0)
    assert m["throughput_fps"] == pytest.approx(300.0, rel=0.02), m
    assert m["utilisation_mean"] > 0.97


def test_a_consumer_bound_farm_delivers_consumers_over_event_time():
    # 10 consumers at 100 ms per event ask 100 frames/s of a farm that makes 300: they never wait once warm
    s = Settings(producers=3, consumers=10, frame_s=0.01, work_s=0.1, events=None, duration=20.0, seed=2)
    m = simulate(s)
    assert m["throughput_fps"] == pytest.approx(100.0, rel=0.02), m
    assert m["wait_p99_s"] < 0.01 and m["jain"] > 0.999
    assert m["utilisation_mean"] == pytest.approx(1 / 3, rel=0.1)  # plus the windows asked ahead
    assert m["counters"]["hedged"] == 0


def test_the_same_seed_gives_the_same_figures_in_any_process():
    """A run is a function of its settings: not of the process's string-hash seed or the objects' addresses (a set
    of endpoints or of consumers, iterated, ordered the events differently: 57.5 against 56.8 frames/s)."""
    script = (
        "import json; from pxdbg.farmsim import Settings, simulate; "
        "m = simulate(Settings(producers=3, slow_fraction=0.34, consumers=4, frame_s=0.027, events=120, seed=0)); "
        "print(json.dumps({k: v for k, v in m.items() if k != 'wall_s'}, sort_keys=True))"
    )
    outs = [
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    ]
    assert outs[0] and outs[0] == outs[1] == outs[2]


def test_load_sets_the_work_per_event_from_the_capacity():
    s = Settings(producers=4, consumers=40, frame_s=0.02, load=0.5)
    assert s.capacity() == pytest.approx(200.0)
    assert s.work_s == pytest.approx(40 / 100.0)


# The emulated Slurm farm (README, "What was tested, and how"): figures measured on 2 shared cores


def test_the_emulated_load_case_3_producers_x_30_consumers():
    # measured: ~65 frames/s from three producers at ~21.5 frames/s each, 0 hedges, per-consumer min/max 0.43-0.65,
    # consumer wait p99 median 1.51 s (worst 1.98 s)
    m = simulate(Settings(producers=3, consumers=30, frame_s=1 / 21.5, events=40, seed=0))
    assert 55 <= m["throughput_fps"] <= 68, m
    assert m["counters"]["hedged"] == 0
    assert 0.4 <= m["consumer_rate_min_max"] <= 0.9
    assert 1.0 <= m["wait_p99_s"] <= 2.5


def test_the_emulated_straggler_case_one_producer_ten_times_slower():
    # measured: 88 % (77-92 % over runs) of the two fast producers' rate alone; 4-8 hedges; simulated 74-84 %
    common = dict(consumers=1, frame_s=0.027, events=240)
    ratios, hedges = [], []
    for seed in range(3):
        fast = simulate(Settings(producers=2, seed=seed, **common))
        mixed = simulate(Settings(producers=3, slow_fraction=0.34, seed=seed, **common))
        ratios.append(mixed["throughput_fps"] / fast["throughput_fps"])
        hedges.append(mixed["counters"]["hedged"])
    assert all(0.7 <= r <= 1.0 for r in ratios), ratios
    assert all(1 <= h <= 12 for h in hedges), hedges


def test_the_emulated_partition_case_costs_under_a_second_of_stall():
    # measured: 0.47 s of waiting against 0.27 s fault-free over 480 events of 40 ms work; the consumer drops
    # the cut-off producer and asks the others for its frames
    common = dict(producers=3, consumers=1, frame_s=0.027, work_s=0.04, events=480, seed=3)
    ref = simulate(Settings(**common))
    sim = Sim(Settings(partition=(5.0, 0.34, 7.0), **common)).run()
    got = measure(sim)
    assert got["frames_consumed"] == ref["frames_consumed"] == 480
    assert got["counters"]["producer_failures"] == 1 and got["counters"]["producers_silent"] >= 1
    assert got["wait_total_per_consumer_s"] - ref["wait_total_per_consumer_s"] < 1.0
    ((_, producer, made),) = sim.heals
    assert producer.frames > made, "the producer was not used again after the heal"


def test_a_lost_producer_is_replaced_and_the_farm_recovers():
    s = Settings(
        producers=20,
        consumers=200,
        frame_s=0.01,
        load=0.8,
        events=None,
        duration=30.0,
        ramp_s=5.0,
        max_producers=4,
        prefetch=4,
        lose=(15.0, 0.05),
        seed=4,
    )
    sim = Sim(s).run()
    m = measure(sim)
    assert sum(not p.up for p in sim.producers) == 1
    assert m["counters"]["producer_failures"] >= 1
    assert m["lose_recovery_s"] is not None and m["lose_recovery_s"] <= 5.0, m
    # every consumer ends with a full subset of live producers
    live = {p.endpoint for p in sim.producers if p.up}
    assert all(len(c.peers) == 4 and set(c.peers) <= live for c in sim.consumers)


def test_a_rolling_restart_drains_every_producer_and_loses_no_consumer():
    s = Settings(
        producers=10,
        consumers=50,
        frame_s=0.01,
        load=0.5,
        events=None,
        duration=40.0,
        max_producers=3,
        prefetch=4,
        rolling_restart=(5.0, 0.1, 1.0),
        seed=5,
    )
    sim = Sim(s).run()
    m = measure(sim)
    assert m["counters"]["producers_drained"] >= 10
    assert m["counters"]["producer_failures"] == 0
    assert all(p.up for p in sim.producers)
    assert m["throughput_of_deliverable"] > 0.95 and min(c.consumed for c in sim.consumers) > 0


def test_every_decision_is_the_project_modules(monkeypatch):
    calls = dict.fromkeys(("plan", "hedges", "assess", "choose", "take"), 0)

    def counting(owner, name, key):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    counting(credits, "plan", "plan")
    counting(credits, "hedges", "hedges")
    counting(health, "assess", "assess")
    counting(Subset, "choose", "choose")
    counting(ConsumerQueues, "take", "take")
    simulate(Settings(producers=3, consumers=3, slow_fraction=0.34, events=60, seed=6))
    assert all(calls.values()), calls


def test_the_command_line_prints_json_and_refuses_bad_faults_in_one_line():
    pxdbg = [sys.executable, "-m", "pxdbg", "farm", "simulate"]
    cmd = [*pxdbg, "--producers", "40", "--consumers", "400", "--slice", "20"]
    out = subprocess.run([*cmd, "--events", "5", "--json"], capture_output=True, text=True, timeout=120, check=True)
    # strict JSON: a figure without a bound (no offered load) is null, never Infinity or NaN
    figures = json.loads(out.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert figures["farm_producers"] == 40 and figures["producers"] == 20 and figures["consumers"] == 200
    assert figures["capacity_fps"] == pytest.approx(40 * 21.5, rel=1e-6)
    bad = subprocess.run([*cmd, "--lose", "ten:0.05"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--lose" in bad.stderr, bad.stderr
    table = subprocess.run([*cmd, "--events", "3"], capture_output=True, text=True, timeout=120, check=True)
    assert "Jain's fairness index" in table.stdout and "slice" in table.stdout


def test_a_slice_stands_for_the_farm():
    # what one producer and one consumer see depends on the ratios a slice keeps, not on the farm's size
    def run(slice_: int) -> dict:
        s = Settings(
            producers=slice_,
            consumers=10 * slice_,
            frame_s=0.01,
            load=0.9,
            events=None,
            duration=25.0,
            ramp_s=5.0,
            max_producers=2,
            prefetch=4,
            hedge_budget=0.01,
            seed=7,
        )
        return simulate(s, farm_producers=1000)

    small, large = run(10), run(20)
    assert small["throughput_fps"] == pytest.approx(large["throughput_fps"], rel=0.03)
    assert small["capacity_fps"] == pytest.approx(large["capacity_fps"]) == pytest.approx(100_000)
    assert abs(small["jain"] - large["jain"]) < 0.01
    assert small["connections_per_producer_mean"] == pytest.approx(large["connections_per_producer_mean"], rel=0.05)
