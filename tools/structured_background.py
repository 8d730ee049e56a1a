"""A background sample with deliberately non-uniform structure, to check that calibration learns it.

    python tools/structured_background.py --events 200 --seed 1 --out structured.npz

The structure (fixed: the same for every seed; the seed only picks the events):

- hot regions: on every sensor, two Gaussian spots in (u, v) that receive 40 % of its clusters;
- long clusters along v: on the sensors x.y.1 of layer 1, 60 % of the clusters are tracks at shallow incidence,
  3 to 14 pixels long along v (sometimes stepping once in u); elsewhere compact blobs of 1 to 6 pixels;
- two groups of correlated sensors: layer 1 ladders 1-4 (index 0..7) share one log-normal event factor, layer 2
  ladders 7-12 (index 28..39) another; all sensors share a weak third one;
- different spectra per layer: a cluster's charge is log-normal with median 45 ADC on layer 1 and 70 ADC on
  layer 2, shared among its pixels with Gamma(2) weights; pixels under 7 ADC are zero-suppressed (which also
  shortens and splits clusters, as in real data); charges clip at 255.

Mean occupancies follow the published per-sensor figures of simulated Belle II background, so that a model
calibrated to those figures passes the occupancy checks and fails only where the structure differs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from pxdbg.models.parametric import reference_figures
from pxdbg.shared.digitsfile import write_digits
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import LAYER_OF_INDEX, N_SENSORS, N_U, N_V, PIXELS_PER_SENSOR
from pxdbg.shared.seeding import frame_rng

LAYOUT_SEED = 20261128
THRESHOLD = 7  # ADC
HOT_SHARE = 0.4
LONG_SHARE = 0.6
LONG_SENSORS = np.flatnonzero((LAYER_OF_INDEX == 1) & (np.arange(N_SENSORS) % 2 == 0))
GROUP_A, GROUP_B = np.arange(0, 8), np.arange(28, 40)
MEDIAN_CHARGE = {1: 45.0, 2: 70.0}
SIGMA_CHARGE = 0.6


class StructuredBackground:
    """The structured "truth": ``frame(rng)`` draws one event."""

    def __init__(self) -> None:
        rng = np.random.default_rng(LAYOUT_SEED)
        self.hot_centre = np.stack(
            [rng.uniform(30, N_U - 30, (N_SENSORS, 2)), rng.uniform(80, N_V - 80, (N_SENSORS, 2))], axis=-1
        )
        self.hot_sigma = np.array([12.0, 40.0])
        # compact shapes: random connected blobs of 1..6 pixels, seed first
        sizes = rng.choice([1, 2, 3, 4, 5, 6], size=64, p=[0.35, 0.25, 0.17, 0.11, 0.07, 0.05])
        self.blobs = []
        for n in sizes:
            pix = [(0, 0)]
            while len(pix) < n:
                du, dv = pix[rng.integers(len(pix))]
                step = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1)][rng.integers(5)]
                cand = (du + step[0], dv + step[1])
                if cand not in pix:
                    pix.append(cand)
            self.blobs.append(np.array(pix))
        self.loadings = np.zeros((N_SENSORS, 3))
        self.loadings[:, 0] = 0.05
        self.loadings[GROUP_A, 1] = 0.25
        self.loadings[GROUP_B, 2] = 0.30
        self.sigma_image = 0.06
        self.clusters = np.ones(N_SENSORS)
        # clusters per sensor for the published mean occupancies: measured on a few unit-intensity events
        target = np.asarray(reference_figures()["mean_occupancy_per_sensor"])
        self.clusters = target * PIXELS_PER_SENSOR / 3.0
        for _ in range(2):
            got = (
                np.mean(
                    [self.frame(frame_rng(LAYOUT_SEED, i), fluctuate=False).sensor_counts() for i in range(4)], axis=0
                )
                / PIXELS_PER_SENSOR
            )
            self.clusters *= np.log1p(-target) / np.log1p(-got)

    def frame(self, rng: np.random.Generator, fluctuate: bool = True) -> SparseFrame:
        z = rng.standard_normal(3)
        log_i = self.loadings @ z + self.sigma_image * rng.standard_normal(N_SENSORS)
        var = (self.loadings**2).sum(axis=1) + self.sigma_image**2
        intensity = np.exp(log_i - 0.5 * var) if fluctuate else np.ones(N_SENSORS)
        n = rng.poisson(self.clusters * intensity)
        sensor = np.repeat(np.arange(N_SENSORS), n)
        total = sensor.size
        # positions: a share in the two hot spots of the sensor, the rest uniform
        hot = rng.random(total) < HOT_SHARE
        spot = rng.integers(0, 2, total)
        u0 = rng.uniform(0, N_U, total)
        v0 = rng.uniform(0, N_V, total)
        centre = self.hot_centre[sensor, spot]
        u0 = np.where(hot, centre[:, 0] + self.hot_sigma[0] * rng.standard_normal(total), u0)
        v0 = np.where(hot, centre[:, 1] + self.hot_sigma[1] * rng.standard_normal(total), v0)
        u0 = np.floor(u0).astype(np.int64)
        v0 = np.floor(v0).astype(np.int64)
        # shapes: long tracks along v on LONG_SENSORS, compact blobs elsewhere
        is_long = np.isin(sensor, LONG_SENSORS) & (rng.random(total) < LONG_SHARE)
        length = np.where(is_long, np.minimum(3 + rng.geometric(0.2, total) - 1, 14), 0)
        blob = rng.integers(0, len(self.blobs), total)
        blob_size = np.array([len(b) for b in self.blobs])[blob]
        size = np.where(is_long, length, blob_size)
        cluster = np.repeat(np.arange(total), size)
        k = np.arange(cluster.size) - np.repeat(np.cumsum(size) - size, size)
        blob_off = np.concatenate(self.blobs)
        blob_start = np.cumsum([len(b) for b in self.blobs]) - [len(b) for b in self.blobs]
        step_at = np.where(rng.random(total) < 0.3, rng.integers(1, 8, total), 99)  # one step in u, sometimes
        long_pix = is_long[cluster]
        bo = blob_off[np.minimum(blob_start[blob][cluster] + k, blob_off.shape[0] - 1)]
        du = np.where(long_pix, (k >= step_at[cluster]).astype(np.int64), bo[:, 0])
        dv = np.where(long_pix, k, bo[:, 1])
        # charge: log-normal cluster charge per layer, shared with Gamma(2) weights, then zero suppression
        median = np.where(LAYER_OF_INDEX[sensor] == 1, MEDIAN_CHARGE[1], MEDIAN_CHARGE[2])
        q_cluster = median * np.exp(SIGMA_CHARGE * rng.standard_normal(total)) * np.sqrt(size)
        w = rng.gamma(2.0, 1.0, cluster.size)
        share = w / np.bincount(cluster, weights=w, minlength=total)[cluster]
        charge = np.floor(q_cluster[cluster] * share).astype(np.int64)
        u = u0[cluster] + du
        v = v0[cluster] + dv
        keep = (charge >= THRESHOLD) & (u >= 0) & (u < N_U) & (v >= 0) & (v < N_V)
        return SparseFrame.from_pixels(sensor[cluster][keep], u[keep], v[keep], np.minimum(charge[keep], 255))

    def frames(self, seed: int, indices):
        return (self.frame(frame_rng(seed, i)) for i in indices)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--seed", type=int, default=1, help="stream seed (frame i draws from its own stream)")
    p.add_argument("--out", required=True, help="digits file (.npz) to write")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    truth = StructuredBackground()
    path = write_digits(
        Path(args.out),
        truth.frames(args.seed, range(args.events)),
        {"model": "structured-background", "seed": args.seed, "first_frame": 0},
    )
    print(
        f"wrote {args.events} events of structured background to {path} in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
