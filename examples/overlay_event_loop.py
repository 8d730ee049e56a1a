"""Background overlay in any Python event loop, the way basf2's BGOverlayExecutor does it.

Each event takes one generated background frame from a BackgroundClient and merges it into the event's
signal digits: where a background digit hits a pixel that already has a signal digit, the charges add;
otherwise the background digit is appended. Run: python examples/overlay_event_loop.py [--events N]
"""

from __future__ import annotations

import argparse

import numpy as np

from pxdbg.consumer import BackgroundClient
from pxdbg.shared.geometry import N_U, N_V


def toy_signal(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A few signal digits: a straight track crossing sensors 0 and 16."""
    sensor = np.array([0, 0, 0, 16, 16], np.uint8)
    u = rng.integers(0, N_U - 1, 5).astype(np.uint8)
    v = rng.integers(0, N_V - 1, 5).astype(np.uint16)
    return {"sensor": sensor, "u": u, "v": v, "charge": rng.integers(20, 120, 5).astype(np.uint16)}


def overlay(signal: dict[str, np.ndarray], background) -> dict[str, np.ndarray]:
    """Merge background digits into signal digits: same pixel -> charges add; else appended."""

    def key(s, u, v):
        return (s.astype(np.int64) * N_U + u) * N_V + v

    sig_key = key(signal["sensor"], signal["u"], signal["v"])
    bg_key = key(background.sensor, background.u, background.v)
    charge = signal["charge"].astype(np.uint16).copy()
    same = np.isin(bg_key, sig_key)
    order = np.argsort(sig_key)
    pos = order[np.searchsorted(sig_key, bg_key[same], sorter=order)]
    np.add.at(charge, pos, background.charge[same].astype(np.uint16))
    new = ~same
    return {
        "sensor": np.concatenate([signal["sensor"], background.sensor[new]]),
        "u": np.concatenate([signal["u"], background.u[new]]),
        "v": np.concatenate([signal["v"], background.v[new]]),
        "charge": np.concatenate([charge, background.charge[new].astype(np.uint16)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with BackgroundClient(workers=args.workers, seed=args.seed, prefetch=8) as background:
        for event in range(args.events):
            signal = toy_signal(rng)
            frame = background.next()
            merged = overlay(signal, frame)
            print(
                f"event {event}: {signal['charge'].size} signal + {frame.n_digits} background digits "
                f"-> {merged['charge'].size} digits"
            )


if __name__ == "__main__":
    main()
