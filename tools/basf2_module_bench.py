"""The basf2 module's cost per event while basf2's C++ modules hold the GIL, and what the prefetch process buys.

    python tools/basf2_module_bench.py [--events 12] [--long]

1. The module in a basf2 job on the stand-in (tests/standin: basf2's processing model, FullSim's stand-in holding
   the GIL for a configurable time per event in one C++ call), -p 0, one local producer: the module's wait for
   its frame and its whole event() (wait + digit fill), p50/p99 after the first event, with the GIL free and
   held 6 s per event (and 40 s with --long).
2. The same loop without basf2, a C call holding the GIL between events: a BackgroundClient in the process
   that holds the GIL (the design before the prefetch process) against the prefetch process's connection,
   from one producer process on ipc: producers judged lost, frames re-issued, the wait per event.

Prints a table; figures depend on the machine (named in the header).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
STANDIN = REPO / "tests" / "standin"


def machine() -> str:
    from pxdbg.bench.machine import cpu_name

    return f"{cpu_name()}, {len(os.sched_getaffinity(0))} CPUs, Python {platform.python_version()}"


def basf2_job(tmp: Path, bgfile: Path, gil: float, events: int) -> dict:
    out, log = tmp / f"events-{gil:g}.npz", tmp / f"basf2-{gil:g}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STANDIN), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(REPO / "tests" / "standin_job.py"), str(out), str(log), "--bgfile", str(bgfile)]
    cmd += ["--source", "workers", "--nproc", "0", "--gil", str(gil), "--events", str(events), "--prefetch", "16"]
    subprocess.run(cmd, check=True, timeout=120 + events * (gil + 5), env=env, capture_output=True)
    text = log.read_text()
    (line,) = [x for x in text.splitlines() if "events in process" in x]
    wait50, wait99, ev50, ev99 = map(float, re.findall(r"p\d\d ([\d.]+) ms", line)[:4])
    lost = sum(bool(re.search(r"lost|re-issu|silent for", x)) for x in text.splitlines())
    return {"wait": (wait50, wait99), "event": (ev50, ev99), "lost": lost}


def hold_gil(seconds: float) -> None:
    """A C call that keeps the GIL (ctypes.PyDLL does not release it), as boost.python does for basf2's modules."""
    ctypes.PyDLL(None).usleep(int(seconds * 1e6)) if seconds < 1 else ctypes.PyDLL(None).sleep(int(seconds))


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.lost += bool(re.search(r"lost|re-issu|silent for", record.getMessage()))


def client_loop(endpoint: str, gil: float, events: int, via_prefetch: bool) -> dict:
    from pxdbg.consumer import BackgroundClient, PipelineError
    from pxdbg.consumer.prefetch import PrefetchConfig, PrefetchProcess
    from pxdbg.shared.spec import ProducerSpec

    counter = _Count()
    logging.getLogger("pxdbg").addHandler(counter)
    spec = ProducerSpec(model="parametric")
    waits = []
    try:
        if via_prefetch:
            p = PrefetchProcess(PrefetchConfig(spec=spec, seed=1, endpoints=[endpoint], prefetch=4))
            conn = p.connect()
            get, close = conn.get, lambda: (conn.close(), p.close())
        else:
            client = BackgroundClient([endpoint], spec=spec, seed=1, prefetch=4)
            get, close = (lambda i: client.next()), client.close
        failed = ""
        try:
            get(0)
            for i in range(1, events + 1):
                hold_gil(gil)
                t0 = time.perf_counter()
                get(i)
                waits.append(time.perf_counter() - t0)
        except PipelineError as exc:  # what the design without a prefetch process comes to with long holds
            failed = f"failed after {len(waits)} events: {type(exc).__name__}"
        finally:
            reissued = 0 if via_prefetch else client.counters["frames_reissued"]
            close()
    finally:
        logging.getLogger("pxdbg").removeHandler(counter)
    w = np.array(waits or [float("nan")]) * 1e3
    return {
        "wait": (float(np.percentile(w, 50)), float(np.percentile(w, 99))),
        "lost": counter.lost,
        "reissued": reissued,
        "failed": failed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=12, help="events with the GIL free (fewer when held)")
    parser.add_argument("--long", action="store_true", help="also hold the GIL 40 s per event (3 events)")
    args = parser.parse_args()
    sys.path.insert(0, str(STANDIN))
    print(f"machine: {machine()}")
    holds = [(0.0, args.events), (6.0, 5)] + ([(40.0, 3)] if args.long else [])
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        bgfile = tmp / "overlay.root"
        subprocess.run(
            [sys.executable, "-c", "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import belle2_root; "
             "belle2_root.write_background_file(sys.argv[2], np.array([[8480, 1, 100, 200]], np.uint16))",
             str(STANDIN), str(bgfile)],
            check=True, timeout=180, capture_output=True,
        )  # fmt: skip
        print("\n1. the module in a basf2 job (stand-in, -p 0, one local producer), after the first event")
        print(
            f"{'GIL held per event':>20} {'events':>7} {'wait p50/p99 (ms)':>20} "
            f"{'event() p50/p99 (ms)':>22} {'lost':>5}"
        )
        for gil, n in holds:
            r = basf2_job(tmp, bgfile, gil, n)
            print(f"{gil:>18.0f} s {n:>7} {r['wait'][0]:>9.2f} / {r['wait'][1]:<8.2f} "
                  f"{r['event'][0]:>10.2f} / {r['event'][1]:<9.2f} {r['lost']:>5}")  # fmt: skip

        sys.path.insert(0, str(REPO / "tests"))
        from pipeline_helpers import producers

        print("\n2. a C call holds the GIL between events: client in that process vs the prefetch process")
        print(
            f"{'GIL held per event':>20} {'where the client runs':>24} {'wait p50/p99 (ms)':>20} "
            f"{'lost':>5} {'re-issued':>10}"
        )
        with producers(tmp) as farm:
            endpoint = farm.start("bench")
            for gil, n in holds[1:]:
                for via in (False, True):
                    r = client_loop(endpoint, gil, min(n, 4), via)
                    where = "prefetch process" if via else "the GIL-holding one"
                    print(f"{gil:>18.0f} s {where:>24} {r['wait'][0]:>9.2f} / {r['wait'][1]:<8.2f} "
                          f"{r['lost']:>5} {r['reissued']:>10}  {r['failed']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
