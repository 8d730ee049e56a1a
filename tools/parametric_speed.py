"""Generation speed of parametric payloads on one core: the shipped one and any calibrated ones, in one run.

    python tools/parametric_speed.py [PAYLOAD.pt ...] [--frames 30] [--rounds 5]

The models take turns (round after round), so a busy machine slows them alike; each figure is the best round's
CPU milliseconds per frame (numpy runs this work on one core; CPU time is what a busy machine inflates least),
with the best round's wall-clock milliseconds beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from pxdbg import models
from pxdbg.bench.machine import cpu_name
from pxdbg.shared.seeding import frame_rng


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("payloads", nargs="*", help="calibrated parametric payloads (.pt)")
    p.add_argument("--frames", type=int, default=30, help="frames per round (default %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="rounds (default %(default)s)")
    args = p.parse_args(argv)
    entries = [("shipped", models.load("parametric"))]
    entries += [(os.path.basename(path), models.load("parametric", checkpoint=path)) for path in args.payloads]
    times: dict[str, list[float]] = {name: [] for name, _ in entries}
    walls: dict[str, list[float]] = {name: [] for name, _ in entries}
    digits: dict[str, float] = {}
    for name, m in entries:  # warm up: numpy tables built, caches filled
        digits[name] = float(np.mean([f.n_digits for f in m.frames(0, range(3))]))
    for r in range(args.rounds):
        for name, m in entries:
            rngs = [frame_rng(r + 1, i) for i in range(args.frames)]
            t0, w0 = time.process_time(), time.perf_counter()
            for rng in rngs:
                m.net.sample(rng)
            times[name].append((time.process_time() - t0) / args.frames)
            walls[name].append((time.perf_counter() - w0) / args.frames)
    print(
        f"parametric generation on one core of {cpu_name()} (load average {os.getloadavg()[0]:.1f}), "
        f"{args.rounds} rounds of {args.frames} frames:"
    )
    base = min(times["shipped"])
    for name, m in entries:
        best, wall = min(times[name]), min(walls[name])
        print(
            f"  {name:24s} {1e3 * best:6.2f} ms CPU per frame (wall {1e3 * wall:6.2f} ms), "
            f"{digits[name]:,.0f} digits per frame, {best / base:.2f} x shipped; model {m.identity}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
