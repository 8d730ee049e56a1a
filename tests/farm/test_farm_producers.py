"""Producers that misbehave across hosts: a model that hangs while heartbeats flow, and a straggler ten times
slower than the others. Both are compared with runs without them: identical frames, nothing lost."""

from __future__ import annotations

import re
import sys

import pytest
from farm import REPO, wait_for

pytestmark = [pytest.mark.farm, pytest.mark.slow]

ODD = REPO / "tests" / "farm" / "odd_producer.py"
#: What a consumer's hedged requests did (printed with each figure).
HEDGE_COUNTERS = (
    "hedged",
    "hedges_won",
    "hedges_wasted",
    "hedges_skipped_budget",
    "duplicates_dropped",
    "producers_quarantined",
)


def _odd_producer(farm, node: int, port: int, *args: str) -> str:
    """Start odd_producer.py as a job step on ``node``; return its endpoint once it answers ``status``."""
    from pxdbg.consumer.status import ask_status as _ask_status

    ep = f"tcp://{farm.cluster.addr(node)}:{port}"
    argv = [
        "srun",
        "-p",
        "prod",
        "-w",
        f"node{node}",
        "-N1",
        "-n1",
        "--overlap",
        "-J",
        f"odd-{port}",
        sys.executable,
        str(ODD),
        "--bind",
        ep,
        *args,
    ]
    farm.cluster.spawn(f"odd-{port}", argv, env=farm.env())
    wait_for(lambda: _ask_status([ep], 1.0), 120, f"{ep} did not answer ({farm.cluster.log_tail(f'odd-{port}.out')})")
    return ep


def _stop(farm, port: int) -> None:
    farm.cluster.slurm(["scancel", "-n", f"odd-{port}"], check=False)


def test_model_hang_while_heartbeats_flow_does_not_hold_the_consumer(farm):
    events, seed = 240, 31
    fast = farm.producer_endpoints[:2]
    ref_job, ref_out = farm.submit_consumers(
        "0", events=events, seed=seed, run_args="--work-ms 20", endpoints=",".join(fast)
    )
    farm.wait_done(ref_job, 240)
    ref = farm.result(ref_job, ref_out, 0)
    hung = _odd_producer(farm, 3, 5701, "--hang-after", "3")
    try:
        job, out = farm.submit_consumers(
            "0", events=events, seed=seed, run_args="--work-ms 20", endpoints=",".join([*fast, hung])
        )
        farm.wait_done(job, 300)
        got = farm.result(job, out, 0)
    finally:
        _stop(farm, 5701)
    assert got.digests == ref.digests, got.log[-3000:]
    # within the run the consumer stops waiting for the hung producer: its overdue frames are asked of another
    # producer (hedged), and once it owes frames for stall_timeout (60 s) it is quarantined. Where the credit
    # planner gave it nothing more once it fell behind, neither is needed: the run is then simply not held, and
    # its total wait stays far below the stall timeout that holding it would have cost.
    quarantined = re.search(rf"producer {re.escape(hung)} quarantined", got.log)
    overtaken = got.counter("hedged") + got.counter("hedges_won")
    assert quarantined or overtaken or got.wait_s < 30, got.log[-3000:]
    print(
        f"\nmodel hang with heartbeats flowing: {events} frames identical to the run without it; the event loop "
        f"waited {got.wait_s:.2f} s against {ref.wait_s:.2f} s; quarantines {got.counter('producers_quarantined')}, "
        f"frames re-issued {got.counter('frames_reissued')}, overdue frames asked elsewhere {overtaken}"
    )


def test_straggler_ten_times_slower_does_not_set_the_pace(farm):
    events, seed = 240, 32
    fast = farm.producer_endpoints[:2]
    ref_job, ref_out = farm.submit_consumers("0", events=events, seed=seed, endpoints=",".join(fast))
    farm.wait_done(ref_job, 240)
    ref = farm.result(ref_job, ref_out, 0)
    slow = _odd_producer(farm, 3, 5702, "--slow", "10")
    try:
        job, out = farm.submit_consumers("0", events=events, seed=seed, endpoints=",".join([*fast, slow]))
        farm.wait_done(job, 300)
        got = farm.result(job, out, 0)
    finally:
        _stop(farm, 5702)
    assert got.digests == ref.digests, got.log[-3000:]
    fast_rate, mixed_rate = ref.summaries[0]["frames_per_s"], got.summaries[0]["frames_per_s"]
    print(
        f"\nstraggler (one producer 10x slower): {mixed_rate:.1f} frames/s against {fast_rate:.1f} frames/s from the "
        f"two fast producers alone ({mixed_rate / fast_rate:.0%}); "
        + ", ".join(f"{k} {got.counter(k)}" for k in HEDGE_COUNTERS)
    )
