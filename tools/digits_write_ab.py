"""A/B of the digits-file writer: this checkout against an earlier revision, the same frames, in one run.

    python tools/digits_write_ab.py REV [--events 150] [--rounds 5] [--pace-ms 0]

The earlier writer is ``shared/digitsfile.py`` as it was at ``REV`` (``git show``), loaded beside this checkout's
(it must import only modules this checkout still has). Each round writes the same parametric frames with all
four writers (before/after, uncompressed/compressed) in turn, so load on a shared machine hits them alike; the
table gives the best and the median wall time per event (append and close, fsync included), the CPU time of the
whole process per event (the background threads' too), the read time and the size per event.

``--pace-ms X`` appends one event every X ms, as a run's event loop does while it waits for its producers or its
simulation, and "write" is then the time the writer takes on that loop: its appends and its close, per event.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _write(module, path: Path, frames, compress: bool, pace_s: float) -> float:
    """Write ``frames`` with ``module``'s writer, one every ``pace_s``; return the seconds spent waiting."""
    if not pace_s:
        module.write_digits(path, frames, {"seed": 11}, compress=compress)
        return 0.0
    waited = 0.0
    with module.DigitsWriter(path, {"seed": 11}, compress=compress) as writer:
        for frame in frames:
            writer.append(frame)
            t0 = time.perf_counter()
            time.sleep(pace_s)
            waited += time.perf_counter() - t0
    return waited


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision whose writer is 'before'")
    parser.add_argument("--events", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pace-ms", type=float, default=0.0, help="one event every this many ms (default: no wait)")
    args = parser.parse_args(argv)

    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{args.rev}:shared/digitsfile.py"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    from pxdbg.models import load
    from pxdbg.shared import digitsfile as after

    with tempfile.TemporaryDirectory(prefix="pxdbg-ab-") as tmp:
        old_path = Path(tmp) / "digitsfile_before.py"
        old_path.write_text(source)
        spec = importlib.util.spec_from_file_location("digitsfile_before", old_path)
        before = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(before)

        frames = load("parametric").frames(11, range(args.events))
        writers = [
            ("before", "uncompressed", before, False),
            ("before", "compressed", before, True),
            ("after", "uncompressed", after, False),
            ("after", "compressed", after, True),
        ]
        results: dict[tuple[str, str], dict[str, list[float]]] = {}
        for _ in range(args.rounds):
            for who, kind, module, compress in writers:
                path = Path(tmp) / "ab.npz"
                cpu0, t0 = _cpu_s(), time.perf_counter()
                waited = _write(module, path, frames, compress, args.pace_ms / 1e3)
                t1, cpu1 = time.perf_counter(), _cpu_s()
                after.DigitsFile(path)
                t2 = time.perf_counter()
                row = results.setdefault((who, kind), {"write": [], "cpu": [], "read": [], "size": []})
                row["write"].append(1e3 * (t1 - t0 - waited) / args.events)
                row["cpu"].append(1e3 * (cpu1 - cpu0) / args.events)
                row["read"].append(1e3 * (t2 - t1) / args.events)
                row["size"].append(path.stat().st_size / args.events / 1e3)
                path.unlink()
    load_avg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    pace = f", one every {args.pace_ms:g} ms" if args.pace_ms else ""
    where = f"{os.cpu_count()} CPUs, load average {load_avg} at the end"
    print(f"{args.events} parametric events{pace}, {args.rounds} rounds; {where}")
    print("writer   format        write best/median   CPU median   read median   size")
    for (who, kind), row in results.items():
        print(
            f"{who:<8} {kind:<13} {min(row['write']):5.2f} / {statistics.median(row['write']):5.2f} ms"
            f"   {statistics.median(row['cpu']):5.2f} ms    {statistics.median(row['read']):5.2f} ms"
            f"      {row['size'][0]:.1f} kB  (per event)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
