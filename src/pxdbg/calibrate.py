"""``pxdbg calibrate``: a parametric model learned from a background sample.

One pass over the sample (a digits file or a ROOT file of PXD digits) collects, per sensor: hits per event,
the hit-charge spectrum and hits per cell of a 10 x 16 pixel grid from every event, and from CLUSTER_EVENTS
events spread over the sample its 8-neighbour clusters (sizes, and a uniform random subset of whole clusters
kept with their pixels and charges). Then, per sensor:

- **shape library**: LIBRARY clusters picked evenly from the subset sorted by (size, charge), each with its
  pixel offsets from the seed pixel (the largest charge) and the rank of each pixel's charge (how the charge
  is shared); reweighted by size until the model's clusters, measured like the sample's, have the sample's
  sizes (the sample's clusters include merged neighbours, and the model's merge again);
- **charge spectra**: the sensor's own hit-charge spectrum less what overlapping clusters add, with the library
  ranks spread evenly over it; tilted (below 100 ADC) so that the charge overlapping clusters add brings the
  mean back to the sample's;
- **hit density**: the pixel density that gives each grid cell its occupancy once overlaps merge, smoothed
  towards a blurred copy of itself (SMOOTHING clusters' worth per cell) so sparse cells do not turn into holes;
- **occupancy**: clusters per event that give that density with these shapes (pixels lost over the edges
  accounted for);
- **correlations**: the covariance of log hit counts over events, less the Poisson noise of the cluster count,
  fitted by N_FACTORS common factors (principal-axis factoring) plus a per-sensor term.

The result is a plain state_dict of :class:`pxdbg.models.parametric.Model`; its sha256 is the model identity.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pxdbg.shared.errors import PxdbgError, require
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import LAYER_OF_INDEX, N_SENSORS, N_U, N_V, PIXELS_PER_SENSOR, sensor_name

log = logging.getLogger(__name__)

MIN_EVENTS = 20  # fewer events cannot pin down event-to-event spreads and correlations
MIN_CLUSTERS = 100  # clusters per sensor (that has hits) for its shape library
CANDIDATES = 4096  # clusters per sensor kept, at random, with their pixels
CLUSTER_EVENTS = 64  # events whose clusters are found (shapes, sizes); hits and charges come from every event
SMOOTHING = 2.0  # pseudo-clusters per density cell
PRUNE_EVERY = 16  # events between prunings of the kept clusters
REWEIGHT_ROUNDS = 3  # rounds of library reweighting by cluster size
REWEIGHT_FRAMES = 24  # model frames measured per round


class CalibrationError(PxdbgError, ValueError):
    """The sample cannot calibrate a model (too small, or missing what the model needs)."""


@dataclass
class Calibration:
    """A calibrated model and the figures of the sample it was learned from."""

    model: object  # pxdbg.models.parametric.Model
    summary: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> str:
        """Write the model's state_dict to ``path`` (atomically); return its sha256 (the model identity)."""
        import torch

        from pxdbg.shared.payloads import sha256_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(self.model.state_dict(), buf)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
        return sha256_file(path)


class _Collector:
    """What one pass over the sample keeps: per-event hit counts, spectra, hit grids, cluster sizes and subsets."""

    def __init__(self, seed: int) -> None:
        from pxdbg.models import parametric as P

        self.P = P
        self.rng = np.random.default_rng(seed)
        self.hits: list[np.ndarray] = []
        self.clustered_events = 0
        self.adc = np.zeros((N_SENSORS, 256), np.int64)
        self.hit_grid = np.zeros((N_SENSORS, P.N_CELLS), np.int64)
        self.sizes = np.zeros((N_SENSORS, P.MAX_CLUSTER + 2), np.int64)  # size 0 unused, last: larger
        self.clusters = np.zeros(N_SENSORS, np.int64)
        self.too_big = np.zeros(N_SENSORS, np.int64)
        self.size_hist = np.zeros((2, 65), np.int64)
        self._pool: list[dict[str, np.ndarray]] = []
        self.kept: dict[str, np.ndarray] | None = None

    def add(self, frame: SparseFrame, find_clusters: bool = True) -> None:
        from pxdbg.validate.metrics import clusters

        P = self.P
        sensor = frame.sensor.astype(np.intp)
        self.hits.append(np.bincount(sensor, minlength=N_SENSORS))
        self.adc += np.bincount(sensor * 256 + frame.charge, minlength=N_SENSORS * 256).reshape(N_SENSORS, 256)
        cell = (frame.u // P.CELL_U).astype(np.intp) * P.GRID_V + frame.v // P.CELL_V
        self.hit_grid += np.bincount(sensor * P.N_CELLS + cell, minlength=N_SENSORS * P.N_CELLS).reshape(
            N_SENSORS, P.N_CELLS
        )
        if not find_clusters:
            return
        self.clustered_events += 1
        labels, sizes, _ = clusters(frame)
        if not sizes.size:
            return
        u = frame.u.astype(np.int64)
        v = frame.v.astype(np.int64)
        charge = frame.charge.astype(np.int64)
        order = np.lexsort((-charge, labels))  # by cluster, largest charge first: the seed pixel leads
        first = np.cumsum(sizes) - sizes
        seed = order[first]
        c_sensor, su, sv = sensor[seed], u[seed], v[seed]
        self.clusters += np.bincount(c_sensor, minlength=N_SENSORS)
        layer = LAYER_OF_INDEX[c_sensor].astype(np.intp) - 1
        self.size_hist += np.bincount(layer * 65 + np.minimum(sizes, 64), minlength=130).reshape(2, 65)
        self.sizes += size_histogram(c_sensor, sizes)
        edge = (u == 0) | (u == N_U - 1) | (v == 0) | (v == N_V - 1)
        at_edge = np.bincount(labels, weights=edge, minlength=sizes.size) > 0
        big = sizes > P.MAX_CLUSTER
        self.too_big += np.bincount(c_sensor[big], minlength=N_SENSORS)
        keep = ~big & ~at_edge  # whole shapes only
        if not keep.any():
            return
        index = np.cumsum(keep) - 1
        lab = labels[order]
        mine = keep[lab]
        d = order[mine]
        row = index[lab[mine]]
        slot = np.arange(order.size)[mine] - first[lab[mine]]
        n = int(keep.sum())
        offsets = np.zeros((n, P.MAX_CLUSTER, 2), np.int8)
        charges = np.zeros((n, P.MAX_CLUSTER), np.int64)
        offsets[row, slot, 0] = u[d] - su[lab[mine]]
        offsets[row, slot, 1] = v[d] - sv[lab[mine]]
        charges[row, slot] = charge[d]
        self._pool.append(
            {
                "sensor": c_sensor[keep],
                "key": self.rng.random(n),
                "size": sizes[keep],
                "offsets": offsets,
                "charges": charges,
            }
        )
        if len(self._pool) >= PRUNE_EVERY:
            self._prune()

    def _prune(self) -> None:
        """Keep, per sensor, the CANDIDATES clusters with the smallest random keys (a uniform random subset)."""
        parts = self._pool + ([self.kept] if self.kept is not None else [])
        self._pool = []
        if not parts:
            return
        allp = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.lexsort((allp["key"], allp["sensor"]))
        s = allp["sensor"][order]
        start = np.searchsorted(s, np.arange(N_SENSORS))
        rank = np.arange(order.size) - start[s]
        sel = order[rank < CANDIDATES]
        self.kept = {k: a[sel] for k, a in allp.items()}

    def finish(self) -> dict[str, np.ndarray]:
        self._prune()
        if self.kept is None:
            return {"sensor": np.zeros(0, np.int64)}
        return self.kept


def _blur(grid: np.ndarray) -> np.ndarray:
    """(sensors, GRID_U, GRID_V) maps blurred twice by [1, 2, 1] / 4 along both axes, edges reflected."""
    out = grid.astype(np.float64)
    for axis in (1, 2):
        for _ in range(2):
            pad = [(0, 0)] * 3
            pad[axis] = (1, 1)
            p = np.pad(out, pad, mode="reflect" if out.shape[axis] > 1 else "edge")
            n = out.shape[axis]
            out = (
                np.take(p, range(n), axis) + 2 * np.take(p, range(1, n + 1), axis) + np.take(p, range(2, n + 2), axis)
            ) / 4
    return out


def _factor_model(cov: np.ndarray, k: int, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Principal-axis factoring of a covariance: loadings (n, k) and specific variances (n,)."""
    diag = np.clip(np.diag(cov), 0.0, None)
    communality = 0.5 * diag
    loadings = np.zeros((cov.shape[0], k))
    for _ in range(iterations):
        reduced = cov.copy()
        np.fill_diagonal(reduced, communality)
        w, vecs = np.linalg.eigh(reduced)
        top = np.argsort(w)[::-1][:k]
        loadings = vecs[:, top] * np.sqrt(np.clip(w[top], 0.0, None))
        communality = np.minimum((loadings**2).sum(axis=1), diag)
    # the loadings may not explain more than a sensor's own variance
    explained = (loadings**2).sum(axis=1)
    scale = np.sqrt(np.where(explained > diag, diag / np.maximum(explained, 1e-300), 1.0))
    loadings *= scale[:, None]
    specific = np.clip(diag - (loadings**2).sum(axis=1), 0.0, None)
    loadings *= np.where(loadings.sum(axis=0) < 0, -1.0, 1.0)  # a factor's sign is arbitrary: make it mostly rise
    if loadings.shape[1] < k:  # fewer sensors with hits than factors
        loadings = np.pad(loadings, ((0, 0), (0, k - loadings.shape[1])))
    return loadings, specific


def _collect(sample, n: int, stride: int, seed: int, progress) -> _Collector:
    col = _Collector(seed)
    for i, frame in enumerate(sample.frames(n)):
        col.add(frame, find_clusters=i % stride == 0)
        if progress is not None:
            progress(i + 1, n)
    return col


def calibrate(
    path: str | os.PathLike,
    *,
    events: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Learn a parametric model from the background sample at ``path`` (first ``events`` events)."""
    require("scipy", "validate", "pxdbg calibrate (clustering)")
    from pxdbg.models import parametric as P
    from pxdbg.validate.samples import open_sample

    t0 = time.perf_counter()
    sample = open_sample(path)
    n = sample.n_events if events is None else min(events, sample.n_events)
    if n < MIN_EVENTS:
        raise CalibrationError(
            f"{path} has {n} events; calibration needs at least {MIN_EVENTS} (the event-to-event spread and the "
            f"correlations of sensor occupancies are learned across events): give a larger sample"
        )
    stride = max(1, n // CLUSTER_EVENTS)  # clusters from events spread over the sample; counts from all
    col = _collect(sample, n, stride, seed, progress)
    kept = np.bincount(col.finish()["sensor"], minlength=N_SENSORS)
    active = np.asarray(col.hits).sum(axis=0) > 0
    short = np.flatnonzero(active & (kept < MIN_CLUSTERS))
    if short.size and stride > 1:  # some sensors are quiet: find the clusters of every event
        log.info("%d sensor(s) have few clusters; reading the sample again for the clusters of every event", short.size)
        col = _collect(sample, n, 1, seed, progress)
        kept = np.bincount(col.finish()["sensor"], minlength=N_SENSORS)
        short = np.flatnonzero(active & (kept < MIN_CLUSTERS))
    if short.size:
        need = int(np.ceil(n * MIN_CLUSTERS / max(float(kept[short].min()), 0.5)))
        names = ", ".join(f"{sensor_name(s)} ({kept[s]})" for s in short[:8]) + (" ..." if short.size > 8 else "")
        raise CalibrationError(
            f"{path}: {short.size} sensor(s) have fewer than {MIN_CLUSTERS} whole clusters (up to "
            f"{P.MAX_CLUSTER} pixels, off the edges) for their shape library: {names}; give a larger sample "
            f"(about {need} events)"
        )
    pool = col.finish()
    hits = np.asarray(col.hits, dtype=np.float64)  # (events, sensors)
    if not active.any():
        raise CalibrationError(f"{path} has no digits in its {n} events: nothing to learn from")

    model = P.Model()
    rng = np.random.default_rng(seed)
    # hit density: the pixel density that gives each cell's occupancy once overlapping clusters merge,
    # smoothed towards a blurred copy of itself; uniform on an empty sensor
    cell_occ = np.clip(col.hit_grid / (n * P.CELL_U * P.CELL_V), 0.0, 0.95)
    rho = -np.log1p(-cell_occ)  # deposits per pixel, per cell
    blurred = _blur(rho.reshape(N_SENSORS, P.GRID_U, P.GRID_V)).reshape(N_SENSORS, P.N_CELLS)
    blurred /= np.maximum(blurred.sum(axis=1, keepdims=True), 1e-300)
    # a smoothing of SMOOTHING clusters' worth of pixels per cell, in the same units as rho
    pseudo = SMOOTHING * 2.5 / (n * P.CELL_U * P.CELL_V) * P.N_CELLS
    dens = rho + pseudo * blurred
    dens[~active] = 1.0
    dens /= dens.sum(axis=1, keepdims=True)
    density_cdf = np.cumsum(dens, axis=1)
    density_cdf[:, -1] = 1.0
    pixels_per_event = rho.sum(axis=1) * P.CELL_U * P.CELL_V  # deposits per sensor and event

    # charge spectra: each sensor's own less what overlapping clusters add (the hit pixels with two or more
    # deposits, whose charges sum: the model's overlaps add them again), tilted so that the deposits on top
    # (a hit pixel holds rho / (1 - exp(-rho)) of them) bring the mean back to the sample's
    with np.errstate(invalid="ignore", divide="ignore"):
        per_hit = np.where(rho > 0, rho / -np.expm1(-rho), 1.0)
        several = np.where(rho > 0, 1.0 - rho * np.exp(-rho) / -np.expm1(-rho), 0.0)
    hits_in = np.maximum(col.hit_grid.sum(axis=1), 1)
    deposits = (col.hit_grid * per_hit).sum(axis=1) / hits_in
    overlap = (col.hit_grid * several).sum(axis=1) / hits_in
    adc_cdf = np.empty((N_SENSORS, P.N_ADC))
    pooled = col.adc.sum(axis=0)
    for s in range(N_SENSORS):
        counts = col.adc[s] if active[s] else pooled
        mean = float(counts @ np.arange(256) / counts.sum())
        adc_cdf[s] = P.tilted_cdf(P.single_deposit_counts(counts, float(overlap[s])), mean / deposits[s])

    # shape library: evenly spaced picks from each sensor's clusters sorted by (size, charge)
    offsets = np.zeros((N_SENSORS, P.LIBRARY, P.MAX_CLUSTER, 2), np.int8)
    charges = np.zeros((N_SENSORS, P.LIBRARY, P.MAX_CLUSTER), np.int64)
    for s in np.flatnonzero(active):
        mine = np.flatnonzero(pool["sensor"] == s)
        total = pool["charges"][mine].sum(axis=1)
        ranked = mine[np.lexsort((total, pool["size"][mine]))]
        pick = ranked[((np.arange(P.LIBRARY) + 0.5) * ranked.size / P.LIBRARY).astype(np.int64)]
        charges[s] = pool["charges"][pick]
        offsets[s] = pool["offsets"][pick]
    P.set_tables(model, adc_cdf=adc_cdf, density_cdf=density_cdf, library_offsets=offsets)
    weights = np.ones((N_SENSORS, P.LIBRARY))
    mean_size = _set_library(model, weights, charges, dens, pixels_per_event, active, rng)

    # the sample's clusters include merged neighbours, and the model's merge again: reweight the library by
    # size until the model's cluster sizes, as measured, match the sample's
    for it in range(REWEIGHT_ROUNDS):
        log.info("matching cluster sizes as measured, round %d of %d", it + 1, REWEIGHT_ROUNDS)
        got = _model_sizes(model, REWEIGHT_FRAMES, seed + it)
        target = col.sizes / np.maximum(col.sizes.sum(axis=1, keepdims=True), 1)
        ratio = (target + 1e-4) / (got / np.maximum(got.sum(axis=1, keepdims=True), 1) + 1e-4)
        size = (charges > 0).sum(axis=2)
        weights *= np.take_along_axis(ratio, size, axis=1)
        weights /= weights.mean(axis=1, keepdims=True)
        mean_size = _set_library(model, weights, charges, dens, pixels_per_event, active, rng)

    # correlations: covariance of log hit counts, less the counting noise, as a factor model
    noise = P.poisson_rel_var(model, np.where(mean_size > 0, mean_size, 1.0))
    idx = np.flatnonzero(active)
    x = np.log(hits[:, idx] + 0.5)
    cov = np.atleast_2d(np.cov(x, rowvar=False)) - np.diag(noise[idx])
    load_a, spec_a = _factor_model(cov, P.N_FACTORS)
    loadings = np.zeros((N_SENSORS, P.N_FACTORS))
    specific = np.zeros(N_SENSORS)
    loadings[idx], specific[idx] = load_a, spec_a
    P.set_tables(model, loadings=loadings, sigma_image=np.sqrt(specific))

    summary = _summary(col, hits, active, pool, model, n, time.perf_counter() - t0)
    summary["sample"] = sample.description
    return Calibration(model, summary)


def size_histogram(sensor: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(sensors, MAX_CLUSTER + 2) cluster counts per size; the last column counts the larger ones."""
    from pxdbg.models.parametric import MAX_CLUSTER

    width = MAX_CLUSTER + 2
    return np.bincount(sensor * width + np.minimum(sizes, width - 1), minlength=N_SENSORS * width).reshape(
        N_SENSORS, width
    )


def _model_sizes(model, frames: int, seed: int) -> np.ndarray:
    """Cluster counts per sensor and size of ``frames`` frames of ``model``, as a sample's are measured."""
    from pxdbg.shared.seeding import frame_rng
    from pxdbg.validate.metrics import clusters

    out = 0
    for i in range(frames):
        frame = model.sample(frame_rng(seed, i))
        labels, sizes, _ = clusters(frame)
        first = np.zeros(sizes.size, np.intp)
        first[labels] = np.arange(labels.size)
        out = out + size_histogram(frame.sensor[first].astype(np.intp), sizes)
    return out


def _set_library(model, weights, charges, dens, pixels_per_event, active, rng) -> np.ndarray:
    """Store library weights and charge codes, and the clusters per event that give each sensor its pixel
    density; return the mean in-sensor pixels per cluster."""
    from pxdbg.models import parametric as P

    codes = np.zeros(charges.shape, np.int64)
    offsets = model.library_offsets.numpy().astype(np.int64)
    mean_size = np.zeros(N_SENSORS)
    for s in np.flatnonzero(active):
        present = charges[s] > 0
        w = np.broadcast_to(weights[s][:, None], present.shape)[present]
        codes[s][present] = P.stratified_codes(charges[s][present], w, rng)
        size_in = P.expected_pixels_in_sensor(offsets[s], present, dens[s])
        mean_size[s] = (weights[s] * size_in).sum() / weights[s].sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        clusters = np.where(mean_size > 0, pixels_per_event / mean_size, 0.0)
    cdf = np.cumsum(weights, axis=1) / weights.sum(axis=1, keepdims=True)
    cdf[:, -1] = 1.0
    P.set_tables(model, library_cdf=cdf, library_charge=codes, clusters_per_sensor=clusters)
    return mean_size


def _summary(col: _Collector, hits, active, pool, model, n: int, seconds: float) -> dict:
    occ = hits.mean(axis=0) / PIXELS_PER_SENSOR
    loadings = model.loadings.numpy()
    common = (loadings**2).sum(axis=1)
    total = common + model.sigma_image.numpy() ** 2
    out = {
        "events": n,
        "seconds": seconds,
        "digits_per_event": float(hits.sum(axis=1).mean()),
        "clusters_per_event": float(col.clusters.sum() / max(col.clustered_events, 1)),
        "clustered_events": col.clustered_events,
        "occupancy_layer": {str(la): float(occ[LAYER_OF_INDEX == la].mean()) for la in (1, 2)},
        "mean_cluster_size_layer": {},
        "library_clusters_per_sensor": int(model.library_cdf.shape[1]),
        "max_cluster": int(model.library_charge.shape[2]),
        "clusters_kept_per_sensor_min": int(np.bincount(pool["sensor"], minlength=N_SENSORS)[active].min()),
        "clusters_too_big_share": float(col.too_big.sum() / max(col.clusters.sum(), 1)),
        "mean_hit_adc_layer": {},
        "log_intensity_std_layer": {},
        "common_factor_share_layer": {},
        "empty_sensors": [sensor_name(s) for s in np.flatnonzero(~active)],
    }
    for la in (1, 2):
        sel = (LAYER_OF_INDEX == la) & active
        h = col.size_hist[la - 1]
        out["mean_cluster_size_layer"][str(la)] = float((h * np.arange(h.size)).sum() / max(h.sum(), 1))
        a = col.adc[sel]
        out["mean_hit_adc_layer"][str(la)] = float((a * np.arange(256)).sum() / max(a.sum(), 1))
        out["log_intensity_std_layer"][str(la)] = float(np.sqrt(total[sel].mean())) if sel.any() else 0.0
        out["common_factor_share_layer"][str(la)] = float(common[sel].sum() / max(total[sel].sum(), 1e-300))
    return out


def speed(model, frames: int = 20) -> float:
    """CPU seconds per frame of ``model`` (a parametric Model) in this process: the cost on one core (numpy does
    this work on one thread), which a busy machine slows less than the wall clock."""
    from pxdbg.shared.seeding import frame_rng

    model.sample(frame_rng(0, 0))
    t0 = time.process_time()
    for i in range(frames):
        model.sample(frame_rng(0, i + 1))
    return (time.process_time() - t0) / frames


def summary_lines(summary: dict) -> list[str]:
    """The calibration summary as printed by ``pxdbg calibrate``."""
    s = summary
    lines = [
        f"sample          {s['sample']}: {s['events']} events, {s['digits_per_event']:.0f} digits and "
        f"{s['clusters_per_event']:.0f} clusters per event",
        "occupancy       layer 1 {:.3f} %, layer 2 {:.3f} %".format(
            100 * s["occupancy_layer"]["1"], 100 * s["occupancy_layer"]["2"]
        ),
        "hit charge      mean {:.1f} ADC on layer 1, {:.1f} ADC on layer 2 (a spectrum per sensor)".format(
            s["mean_hit_adc_layer"]["1"], s["mean_hit_adc_layer"]["2"]
        ),
        "clusters        mean size {:.2f} px on layer 1, {:.2f} px on layer 2; library of {} per sensor from at "
        "least {} kept; {:.2f} % larger than the library's {} px".format(
            s["mean_cluster_size_layer"]["1"],
            s["mean_cluster_size_layer"]["2"],
            s["library_clusters_per_sensor"],
            s["clusters_kept_per_sensor_min"],
            100 * s["clusters_too_big_share"],
            s["max_cluster"],
        ),
        "fluctuations    log-intensity std {:.3f} (layer 1), {:.3f} (layer 2); common factors explain {:.0f} % and "
        "{:.0f} % of it".format(
            s["log_intensity_std_layer"]["1"],
            s["log_intensity_std_layer"]["2"],
            100 * s["common_factor_share_layer"]["1"],
            100 * s["common_factor_share_layer"]["2"],
        ),
    ]
    if s["empty_sensors"]:
        lines.append(f"empty sensors   {', '.join(s['empty_sensors'])}: no hits in the sample, generated empty")
    if "ms_per_frame" in s:
        lines.append(f"speed           {s['ms_per_frame']:.1f} ms (CPU) per frame on one core of this machine")
    lines.append(f"took            {s['seconds']:.1f} s")
    return lines
