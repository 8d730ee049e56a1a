"""The farm on the emulated cluster: the example Slurm recipes submitted unchanged, and their outputs read back.

Producer nodes 1-3 (partition ``prod``), consumer nodes 4-5 (partition ``sim``, 16 slots each). Jobs get the
paths they need through the environment variables the recipes document; ``PXDBG`` is this interpreter's
``python -m pxdbg`` (the repository's venv, which every node sees on the shared filesystem).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "examples" / "slurm"
PRODUCERS = RECIPES / "producers.sbatch"
CONSUMERS = RECIPES / "consumers.sbatch"
PRODUCER_NODES = [1, 2, 3]
CONSUMER_NODES = [4, 5]
PORT = 5555
PXDBG = f"{sys.executable} -m pxdbg"


def nodes_needed() -> int:
    return max(PRODUCER_NODES + CONSUMER_NODES)


def digest(frame) -> str:
    h = hashlib.sha256()
    for a in (frame.sensor, frame.u, frame.v, frame.charge):
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(b"|")
    return h.hexdigest()[:20]


_EXPECTED: dict[tuple[int, int], str] = {}


def expected(seed: int, first: int, n: int) -> list[str]:
    """Digests of frames first..first+n-1 of a stream, generated in this process (no farm involved)."""
    todo = [i for i in range(first, first + n) if (seed, i) not in _EXPECTED]
    if todo:
        from pxdbg import models

        model = models.load("parametric")
        for i, frame in zip(todo, model.frames(seed, todo)):
            _EXPECTED[(seed, i)] = digest(frame)
    return [_EXPECTED[(seed, i)] for i in range(first, first + n)]


@dataclass
class TaskResult:
    """One consumer task's output: its frames' digests in order, and the summaries of its runs."""

    digests: list[str]
    summaries: list[dict]
    log: str

    @property
    def wall_s(self) -> float:
        return sum(s["wall_s"] for s in self.summaries)

    @property
    def wait_s(self) -> float:
        """Seconds the event loop waited for frames, over all runs."""
        return sum(s["wait_ms_total"] for s in self.summaries) / 1e3

    def counter(self, name: str) -> int:
        return sum(int(s.get("counters", {}).get(name, 0)) for s in self.summaries)


def wait_for(pred, timeout: float, what: str, interval: float = 0.2):
    """Poll ``pred`` until it returns something true (returned), at most ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} within {timeout:.0f} s")
        time.sleep(interval)


class Farm:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.root = cluster.root
        self.rdv = self.root / "rdv"
        self.producer_endpoints: list[str] = []
        self.jobs: list[str] = []
        self._runs = 0

    @staticmethod
    def partitions() -> dict[str, list[int]]:
        return {"prod": PRODUCER_NODES, "sim": CONSUMER_NODES}

    def env(self, **extra: str) -> dict:
        return self.cluster.env(PXDBG=PXDBG, PYTHONUNBUFFERED="1", **extra)

    # -- producers ---------------------------------------------------------------------------------------------
    def start_producers(self, nodes: list[int], port: int = PORT, session: bool = True) -> tuple[str, list[str]]:
        """Submit the producer recipe on ``nodes``; wait until each registered; (job id, endpoints)."""
        names = ",".join(f"node{i}" for i in nodes)
        job = self.cluster.sbatch(
            PRODUCERS,
            "-p",
            "prod",
            "-N",
            str(len(nodes)),
            "-w",
            names,
            "--ntasks-per-node=1",
            "-o",
            str(self.root / "out" / "producers-%j.out"),
            env=self.env(PXDBG_RENDEZVOUS=str(self.rdv), PXDBG_PORT=str(port)),
        )
        self.jobs.append(job)
        endpoints = [f"tcp://{self.cluster.addr(i)}:{port}" for i in nodes]
        try:
            wait_for(lambda: set(endpoints) <= set(self.registered()), 120, f"producers {endpoints} did not register")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; job {job}: {self.cluster.describe(job)}\n{self.job_log('producers', job)}\n"
                f"{self.cluster.log_tail('slurmd-node1.log')}"
            ) from None
        if session:
            self.producer_endpoints = endpoints
        return job, endpoints

    def registered(self) -> list[str]:
        from pxdbg.shared import discovery

        return discovery.parse(f"dir:{self.rdv}").resolve()

    def producer_pids(self, node: int) -> list[int]:
        pids = []
        for pid in self.cluster._pids_in(self.cluster.ns(node)):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"produce" in cmd and b"--register" in cmd:
                pids.append(pid)
        return pids

    @staticmethod
    def rss_mb(pid: int) -> float:
        m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        assert m, f"no VmRSS for {pid}"
        return int(m.group(1)) / 1024

    # -- consumers ---------------------------------------------------------------------------------------------
    def consumer_endpoints(self) -> str:
        """The endpoint string consumers get: the rendezvous directory the producer jobs register in."""
        return f"dir:{self.rdv}"

    def submit_consumers(
        self,
        array: str,
        *,
        events: int,
        seed: int,
        chunk: int | None = None,
        run_args: str = "",
        endpoints: str | None = None,
        out: Path | None = None,
        split: str = "seed",
    ) -> tuple[str, Path]:
        self._runs += 1
        out = out or self.root / f"consumers-{self._runs}"
        env = self.env(
            PXDBG_ENDPOINTS=endpoints or self.consumer_endpoints(),
            PXDBG_OUT=str(out),
            PXDBG_EVENTS=str(events),
            PXDBG_CHUNK=str(chunk or events),
            PXDBG_SEED=str(seed),
            PXDBG_SPLIT=split,
            PXDBG_RUN_ARGS=f"--connect-timeout 60 {run_args}",
        )
        job = self.cluster.sbatch(
            CONSUMERS, "-p", "sim", f"--array={array}", "-o", str(self.root / "out" / "consumers-%A_%a.out"), env=env
        )
        self.jobs.append(job)
        return job, out

    def task_log(self, job: str, task: int) -> str:
        path = self.root / "out" / f"consumers-{job}_{task}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def job_log(self, kind: str, job: str) -> str:
        path = self.root / "out" / f"{kind}-{job}.out"
        return path.read_text(errors="replace")[-3000:] if path.exists() else f"(no {path.name})"

    def wait_progress(self, job: str, task: int, events: int, timeout: float = 120) -> None:
        """Wait until a task's log shows at least ``events`` events done in its current run."""

        def done() -> bool:
            counts = [int(m) for m in re.findall(r"^(\d+)/\d+ events", self.task_log(job, task), re.M)]
            return bool(counts) and max(counts) >= events

        wait_for(
            done,
            timeout,
            f"consumer task {job}_{task} did not reach {events} events: {self.task_log(job, task)[-2000:]}",
        )

    def wait_done(self, job: str, timeout: float = 300) -> None:
        """Wait until the job is gone; if it is not, fail with where each of its unfinished tasks stands and what
        loads the machine (a run that is slow inside CI only is otherwise a bare pytest timeout)."""
        try:
            self.cluster.wait_gone(job, timeout)
        except Exception as exc:
            raise AssertionError(f"consumer job {job} did not finish: {exc}\n{self.progress_report(job)}") from None

    def progress_report(self, job: str, most: int = 4) -> str:
        """Each task of ``job`` whose log has no summary line yet, with its last progress line; the log tails of the
        first ``most`` of them; the load average and the busiest processes."""
        lines, tails = [], []
        for path in sorted((self.root / "out").glob(f"consumers-{job}_*.out")):
            log = path.read_text(errors="replace")
            if re.search(r"^pxdbg consumers: task \d+ done$", log, re.M):
                continue
            counts = re.findall(r"^(\d+/\d+ events.*)$", log, re.M)
            lines.append(f"{path.stem}: {counts[-1] if counts else 'no event yet'}")
            if len(tails) < most:
                tails.append(f"--- {path.name} (last 1500 characters)\n{log[-1500:]}")
        ps = subprocess.run(
            ["ps", "-eo", "pcpu,rss,etime,args", "--sort=-pcpu"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[:8]
        ps = [line[:200] for line in ps]
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        return "\n".join([f"unfinished tasks ({len(lines)}):", *lines, *tails, f"load average {load}; busiest:", *ps])

    def result(self, job: str, out: Path, task: int) -> TaskResult:
        from pxdbg.shared.digitsfile import read_digits

        d = out / f"task-{task:05d}"
        log = self.task_log(job, task)
        assert d.is_dir(), f"task {task} wrote nothing; its log:\n{log[-3000:]}"
        parts = sorted(d.glob("part-*[0-9].npz"))
        assert parts, f"task {task} wrote no complete part; its log:\n{log[-3000:]}"
        digests, summaries = [], []
        for part in parts:
            digests += [digest(f) for f in read_digits(part)]
            summary = part.with_suffix(".json")
            if summary.exists():
                summaries.append(json.loads(summary.read_text()))
        return TaskResult(digests, summaries, log)

    def close(self) -> None:
        for job in self.jobs:
            self.cluster.scancel(job)
