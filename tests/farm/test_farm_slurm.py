"""The farm on an emulated Slurm cluster: nodes on their own addresses, the recipes, and many consumers."""

from __future__ import annotations

import statistics
import subprocess
import time

import pytest
from farm import CONSUMER_NODES, PRODUCER_NODES, PXDBG, expected, wait_for

pytestmark = [pytest.mark.farm, pytest.mark.slow]


def test_job_steps_run_on_their_own_nodes_and_addresses(cluster):
    nodes = PRODUCER_NODES + CONSUMER_NODES
    out = cluster.slurm(
        [
            "srun",
            "-N",
            str(len(CONSUMER_NODES)),
            "-p",
            "sim",
            "-l",
            "bash",
            "-c",
            "echo $SLURMD_NODENAME $(hostname -I)",
        ],
        timeout=60,
    ).stdout
    seen = dict(line.split(": ", 1)[1].split() for line in out.strip().splitlines())
    assert seen == {f"node{i}": cluster.addr(i) for i in CONSUMER_NODES}
    # real TCP between two nodes' addresses: a listener on node 4, a client on node 5
    a4 = cluster.addr(4)
    serve = f"import socket; s = socket.create_server(('{a4}', 7000)); s.settimeout(30); c, a = s.accept(); "
    server = cluster.spawn("echo-server", ["python3", "-c", serve + "c.sendall(a[0].encode()); c.close()"], node=4)
    ask = f"import socket\ntry:\n c = socket.create_connection(('{a4}', 7000), timeout=2)\n print(c.recv(100).decode())"
    ask += "\nexcept OSError: pass"
    reply = wait_for(
        lambda: cluster.in_node(5, ["python3", "-c", ask], timeout=30).stdout.strip(),
        30,
        "node 5 could not reach node 4",
    )
    assert reply == cluster.addr(5)  # the server saw node 5's own address
    server.wait(timeout=30)
    assert len(nodes) == cluster.nodes


def test_producer_recipe_registers_one_producer_per_node(farm):
    assert sorted(farm.registered()) == sorted(farm.producer_endpoints)
    assert farm.producer_endpoints == [f"tcp://{farm.cluster.addr(i)}:5555" for i in PRODUCER_NODES]
    for i in PRODUCER_NODES:
        assert len(farm.producer_pids(i)) == 1, f"node{i} should run exactly one producer"


def test_consumer_array_matches_in_process_generation(farm):
    """Each task its own stream (split=seed), or one stream split by first frame (split=frames)."""
    job, out = farm.submit_consumers("0-2", events=12, seed=700, chunk=5)
    job2, out2 = farm.submit_consumers("0-1", events=10, seed=900, split="frames")
    farm.wait_done(job, 240)
    farm.wait_done(job2, 240)
    for task in range(3):
        got = farm.result(job, out, task)
        assert got.digests == expected(700 + task, 0, 12), got.log[-2000:]
        assert len(got.summaries) == 3  # parts of 5, 5 and 2 events
    joined = farm.result(job2, out2, 0).digests + farm.result(job2, out2, 1).digests
    assert joined == expected(900, 0, 20)


@pytest.mark.timeout(660)  # its own waits (120 + 120 + 60 + 240 + 10 s) fail first, naming the tasks behind
def test_load_thirty_concurrent_consumers(farm):
    consumers, events = 30, 40
    pids = {i: farm.producer_pids(i) for i in PRODUCER_NODES}
    rss_before = {pid: farm.rss_mb(pid) for ps in pids.values() for pid in ps}
    job, out = farm.submit_consumers(f"0-{consumers - 1}", events=events, seed=5000)
    farm.cluster.wait_running(job, consumers, timeout=120)  # all 30 at once
    farm.wait_progress(job, 0, 5)
    status = subprocess.run(
        [*PXDBG.split(), "farm", "status", f"dir:{farm.rdv}", "--interval", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    table = status.stdout.splitlines()
    assert len(table) == 2 + len(PRODUCER_NODES) and "no answer" not in status.stdout, status.stdout
    print("\nload: pxdbg farm status during the run:\n" + status.stdout.rstrip())
    assert sum(int(row.split()[3]) for row in table[1:-1]) > 0  # consumers connected while task 0 streams
    peak = dict(rss_before)
    end = time.monotonic() + 240
    while farm.cluster.job_state(job) and time.monotonic() < end:
        for pid in peak:
            peak[pid] = max(peak[pid], farm.rss_mb(pid))
        time.sleep(0.5)
    farm.wait_done(job, 10)
    results = [farm.result(job, out, t) for t in range(consumers)]
    for t, r in enumerate(results):
        assert r.digests == expected(5000 + t, 0, events), f"task {t}: {r.log[-2000:]}"
    # a consumer's rate once its first frame came (python start-up of 30 processes on 2 cores left out)
    rates = [(events - 1) / (r.summaries[0]["wall_s"] - r.summaries[0]["first_frame_s"]) for r in results]
    starts = [r.summaries[0]["first_frame_s"] for r in results]
    p99 = [r.summaries[0]["wait_ms_p99"] for r in results]
    rss_after = {pid: farm.rss_mb(pid) for pid in rss_before}
    print(
        f"\nload: {len(PRODUCER_NODES)} producer nodes, {consumers} concurrent consumers x {events} events "
        f": all frames identical to in-process generation"
    )
    print(
        f"load: per-consumer throughput min {min(rates):.1f} / max {max(rates):.1f} frames/s "
        f"(min/max {min(rates) / max(rates):.2f})"
    )
    print(f"load: first frame after {min(starts):.1f} .. {max(starts):.1f} s")
    names = ("hedged", "hedges_wasted", "hedges_skipped_budget", "duplicates_dropped", "frames_reissued")
    print("load: consumer counters over all: " + ", ".join(f"{k} {sum(r.counter(k) for r in results)}" for k in names))
    print(f"load: consumer wait p99 median {statistics.median(p99):.1f} ms, worst {max(p99):.1f} ms")
    print(
        "load: producer RSS MB before/peak/after: "
        + ", ".join(f"{rss_before[p]:.0f}/{peak[p]:.0f}/{rss_after[p]:.0f}" for p in rss_before)
    )
    assert len(rss_before) == len(PRODUCER_NODES)
