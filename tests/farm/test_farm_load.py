"""Fair share across hosts: a consumer that asks for the largest prefetch does not starve the others.

Each producer works round robin over its consumers, one frame each in turn (``pxdbg.producer.queues``), so a
consumer with thousands of frames outstanding gets its share and no more. One consumer asks every frame of its
run at once (``--prefetch 4096``, 1,500 events: ~500 outstanding at each of the three producers); eight ordinary
consumers (prefetch 16) start once it streams. Without fair share they would wait behind its ~1,500 frames, i.e.
until it is done; with it they all finish while it still runs.
"""

from __future__ import annotations

import random
import re
import statistics

import pytest
from farm import PRODUCER_NODES, expected

pytestmark = [pytest.mark.farm, pytest.mark.slow]

BIG_EVENTS, SMALL, SMALL_EVENTS = 1500, 8, 40


def _rate(summary: dict, events: int) -> float:
    """Frames/s once the first frame came (process start-up left out)."""
    return (events - 1) / (summary["wall_s"] - summary["first_frame_s"])


@pytest.mark.timeout(720)  # its own waits (180 + 240 + 240 s) fail first, naming the tasks behind
def test_a_consumer_with_the_largest_prefetch_does_not_starve_the_others(farm):
    big_job, big_out = farm.submit_consumers("0", events=BIG_EVENTS, seed=6000, run_args="--prefetch 4096")
    farm.wait_progress(big_job, 0, 100, timeout=180)  # it streams, with its whole run asked for
    small_job, small_out = farm.submit_consumers(f"0-{SMALL - 1}", events=SMALL_EVENTS, seed=6100)
    farm.wait_done(small_job, 240)
    big_running = bool(farm.cluster.job_state(big_job))
    big_log_then = farm.task_log(big_job, 0)
    farm.wait_done(big_job, 240)

    small = [farm.result(small_job, small_out, t) for t in range(SMALL)]
    for t, r in enumerate(small):
        assert r.digests == expected(6100 + t, 0, SMALL_EVENTS), f"task {t}: {r.log[-2000:]}"
    big = farm.result(big_job, big_out, 0)
    assert len(big.digests) == BIG_EVENTS and len(set(big.digests)) == BIG_EVENTS, big.log[-3000:]
    # its frames against in-process generation: the first and last 20 and 60 others drawn at random (all 1,500
    # would take a minute of this machine's CPU)
    rng = random.Random(6000)
    sample = sorted({*range(20), *range(BIG_EVENTS - 20, BIG_EVENTS), *rng.sample(range(BIG_EVENTS), 60)})
    want = {i: expected(6000, i, 1)[0] for i in sample}
    assert [big.digests[i] for i in sample] == [want[i] for i in sample], "the big consumer's frames differ"
    done = [int(n) for n in re.findall(r"^(\d+)/\d+ events", big_log_then, re.M)]
    # nobody starved: every ordinary consumer got all its frames while the big one was still running
    assert big_running, (
        f"the consumer with prefetch 4096 finished before the {SMALL} others did: they waited behind it\n"
        f"{big.log[-2000:]}"
    )

    rates = [_rate(r.summaries[0], SMALL_EVENTS) for r in small]
    p99 = [r.summaries[0]["wait_ms_p99"] for r in small]
    print(
        f"\nfair share: {len(PRODUCER_NODES)} producer nodes; one consumer with prefetch 4096 ({BIG_EVENTS} events, "
        f"{_rate(big.summaries[0], BIG_EVENTS):.1f} frames/s over its run) and {SMALL} with prefetch 16 "
        f"({SMALL_EVENTS} events each) started once it streamed: all frames identical to in-process generation"
    )
    print(
        f"fair share: the {SMALL} ordinary consumers all finished while the big one ran (it had done "
        f"{max(done, default=0)} of {BIG_EVENTS} events by then); their rate {min(rates):.1f} .. {max(rates):.1f} "
        f"frames/s, wait p99 median {statistics.median(p99):.0f} ms, worst {max(p99):.0f} ms; the big one's "
        f"max in flight {big.summaries[0]['max_in_flight']}"
    )
