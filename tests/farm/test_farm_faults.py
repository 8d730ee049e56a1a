"""Faults across hosts. Each fault run is compared with a fault-free run of the same stream and settings:
identical frames, nothing lost or duplicated; the stall is the fault run's extra wall time (printed)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from signal import SIGKILL

import pytest
from farm import CONSUMER_NODES, PXDBG, wait_for

pytestmark = [pytest.mark.farm, pytest.mark.slow]

EVENTS = 240
RUN_ARGS = "--work-ms 40"  # ~25 events/s: a run lasts ~10 s, long enough to be hit mid-run


def _run(farm, seed: int, fault=None, chunk: int | None = None, endpoints: str | None = None, events: int = EVENTS):
    job, out = farm.submit_consumers("0", events=events, seed=seed, chunk=chunk, run_args=RUN_ARGS, endpoints=endpoints)
    if fault is not None:
        job = fault(job, out) or job
    farm.wait_done(job, 240)
    return farm.result(job, out, 0)


def _compare(name: str, ref, got) -> None:
    events = len(ref.digests)
    assert events >= EVENTS and len(set(ref.digests)) == events
    assert got.digests == ref.digests, f"{name}: frames differ from the fault-free run\n{got.log[-3000:]}"
    names = sorted({k for s in got.summaries for k in s.get("counters", {})} - {"frames_received"})
    counters = ", ".join(f"{k} {got.counter(k)}" for k in names if got.counter(k))
    print(
        f"\n{name}: {events} frames identical to the fault-free run; stall: event loop waited "
        f"{got.wait_s:.2f} s against {ref.wait_s:.2f} s fault-free, wall {got.wall_s:.1f} s against "
        f"{ref.wall_s:.1f} s; {counters or 'no counters'}"
    )


def _lines_after(log: str, start: int, pattern: str) -> bool:
    return re.search(pattern, log[start:]) is not None


def test_partitioned_producer_node_is_dropped_then_used_again(farm):
    from pxdbg.consumer.status import ask_status as _ask_status

    node, ep = 1, farm.producer_endpoints[0]
    # Twice the usual run: the partition no longer stalls the run (the silent producer's frames go elsewhere at its
    # first missed pong), so after the loss verdict (5 s) and the heal enough events must be left to use it again
    events = 2 * EVENTS
    ref = _run(farm, seed=11, events=events)
    sent = {}

    def partition(job, out):
        farm.wait_progress(job, 0, 24)
        wait_for(
            lambda: re.search(rf"producer {re.escape(ep)} ready", farm.task_log(job, 0)),
            60,
            f"the consumer never used {ep}: {farm.task_log(job, 0)[-3000:]}",
        )
        farm.cluster.partition(node)
        try:
            wait_for(
                lambda: re.search(rf"producer {re.escape(ep)} (lost|vanished|quarantined)", farm.task_log(job, 0)),
                60,
                f"the consumer did not drop the partitioned {ep}: {farm.task_log(job, 0)[-3000:]}",
            )
        finally:
            farm.cluster.heal(node)
        mark = len(farm.task_log(job, 0))
        wait_for(
            lambda: _lines_after(farm.task_log(job, 0), mark, rf"producer {re.escape(ep)} ready"),
            60,
            f"the consumer did not take {ep} back after the heal",
        )
        assert farm.cluster.job_state(job), "the run ended before the heal: nothing left to prove 'used again'"
        sent["heal"] = _ask_status([ep], 10)[ep]["counters"]["frames_sent"]

    got = _run(farm, seed=11, fault=partition, events=events)
    sent["end"] = _ask_status([ep], 10)[ep]["counters"]["frames_sent"]
    _compare("partition of node1 (link down ~5 s, then up)", ref, got)
    drops = sum(got.counter(k) for k in ("producer_failures", "producers_vanished", "producers_quarantined"))
    assert drops >= 1
    assert sent["end"] > sent["heal"], f"{ep} sent no frame after the heal: it was not used again"
    print(f"partition: {ep} sent {sent['end'] - sent['heal']} frames after it was taken back")


def test_packet_loss_on_a_producer_link(farm):
    node = 2
    ref = _run(farm, seed=12)

    def loss(job, out):
        farm.wait_progress(job, 0, 24)
        farm.cluster.loss(node, 0.2)

    try:
        got = _run(farm, seed=12, fault=loss)
    finally:
        farm.cluster.clear_faults(node)
    _compare("20 % packet loss on node2's link", ref, got)


def test_scancel_of_a_producer_job(farm):
    job_p, extra = farm.start_producers([3], port=5600, session=False)
    endpoints = farm.consumer_endpoints()  # the extra producer registers there too
    ref = _run(farm, seed=13, endpoints=endpoints)

    def cancel(job, out):
        farm.wait_progress(job, 0, 24)
        farm.cluster.scancel(job_p)
        wait_for(lambda: extra[0] not in farm.registered(), 30, "the cancelled producer's entry did not go")

    got = _run(farm, seed=13, fault=cancel, endpoints=endpoints)
    assert re.search(rf"producer {re.escape(extra[0])} ready", got.log), "the cancelled producer was never used"
    _compare("scancel of a producer job", ref, got)
    farm.cluster.wait_gone(job_p, 60)


def _kill_outright(farm, task_dir) -> None:
    """SIGKILL the task's `pxdbg run` (the OOM killer, a node failure). Slurm's own `scancel --signal=KILL` is a
    cancel (SIGTERM first), so the process is killed directly, in the node's namespace where it runs."""
    killed = []
    for node in CONSUMER_NODES:
        for pid in farm.cluster._pids_in(farm.cluster.ns(node)):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"run" in cmd and any(str(task_dir).encode() in arg for arg in cmd):
                os.kill(pid, SIGKILL)
                killed.append(pid)
    assert killed, f"no pxdbg run writing {task_dir} was found"


@pytest.mark.parametrize("signal", ["TERM", "KILL"])
def test_killed_consumer_job_resumes_after_its_last_written_frame(farm, signal):
    """scancel (SIGTERM: the run closes a partial part) and SIGKILL (a node failure, the OOM killer, Slurm's
    escalation after the time limit: only the part's spool is left); the resubmitted job continues either."""
    chunk = 60
    seed = 14 if signal == "TERM" else 15
    ref = _run(farm, seed=seed, chunk=chunk)
    state = {}

    def kill_and_resubmit(job, out):
        task_dir = out / "task-00000"
        first = task_dir / "part-000000000.npz"
        wait_for(first.exists, 120, "the first part was not written")
        wait_for(  # a complete part logs 10 progress lines: 3 more are 30 % into the second part
            lambda: len(re.findall(r"^\d+/60 events", farm.task_log(job, 0), re.M)) >= 13,
            60,
            "the second part did not progress",
        )
        written = sorted(p.name for p in task_dir.glob("part-*[0-9].npz"))
        if signal == "KILL":
            _kill_outright(farm, task_dir)
        else:
            farm.cluster.scancel(job)
        farm.cluster.wait_gone(job, 60)
        state["killed_after"] = written
        state["left"] = sorted(p.name for p in task_dir.glob("*partial*"))
        state["first"], state["mtime"] = first, first.stat().st_mtime
        time.sleep(0.2)
        job2, _ = farm.submit_consumers("0", events=EVENTS, seed=seed, chunk=chunk, run_args=RUN_ARGS, out=out)
        return job2

    got = _run(farm, seed=seed, fault=kill_and_resubmit, chunk=chunk)
    assert "is complete; resuming after it" in got.log
    if signal == "KILL":  # nothing closed the part: its spool is all there is, and it is enough
        assert state["left"] and all(n.endswith(".spool") for n in state["left"]), state["left"]
    resumed = "resuming " + str(state["first"].parent) in got.log
    if (
        "--resume"
        in subprocess.run([*PXDBG.split(), "run", "--help"], capture_output=True, text=True, timeout=60).stdout
    ):
        assert resumed, f"the interrupted part was not continued with --resume\n{got.log[-3000:]}"
    how = "its partial part continued with --resume" if resumed else "its partial part made again"
    print(f"\nresubmitted consumer (SIG{signal}; left {', '.join(state['left'])}): complete parts kept, {how}")
    assert state["first"].stat().st_mtime == state["mtime"], "a part written before the kill was made again"
    assert any(n.startswith("part-000000000") for n in state["killed_after"])
    _compare(
        f"consumer job killed (SIG{signal}) after {len(state['killed_after'])} of {EVENTS // chunk} parts and "
        "resubmitted",
        ref,
        got,
    )
